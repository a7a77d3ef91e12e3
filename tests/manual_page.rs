//! `man/sonitor.1`, the manual page the Debian package installs, is written by hand: this keeps it from drifting
//! from the binary. Every command and every option `sonitor --help` lists is in it, and so is every exit status
//! the daemon defines and every machine health the configuration guide lists; where groff is installed, it renders
//! without a warning.

mod common;

use std::process::Command;

fn help(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// The long options (`--name`) of a help text, without clap's own.
fn options(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .filter(|r| !r.starts_with('-'))
                .map_or(l, |r| r.split_once(", ").map_or(r, |(_, rest)| rest));
            let name = l.strip_prefix("--")?.split([' ', '=']).next()?;
            (!["help", "version"].contains(&name)).then(|| name.to_string())
        })
        .collect()
}

#[test]
fn the_manual_page_names_every_command_option_and_exit_status() {
    let page = std::fs::read_to_string(common::workspace().join("man/sonitor.1")).unwrap();
    // roff writes a hyphen in an option as `\-`.
    let plain = page.replace("\\-", "-");
    let top = help(&[]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(
        commands,
        ["run", "validate", "reload", "status", "devices", "demo"],
        "{top}"
    );
    for c in &commands {
        assert!(
            plain.contains(&format!(".B sonitor {c}")),
            "no synopsis of `{c}`"
        );
        assert!(
            plain.contains(&format!(".TP\n.B {c}\n")),
            "no entry for the command `{c}`"
        );
        for o in options(&help(&[c])) {
            assert!(
                plain.contains(&format!("--{o}")),
                "`sonitor {c} --{o}` is not in man/sonitor.1"
            );
        }
    }
    for status in [
        sonitor::config::EXIT_CONFIG,
        sonitor::daemon::EXIT_INPUT,
        sonitor::daemon::EXIT_LOST,
        sonitor::daemon::EXIT_INTERNAL,
        sonitor::state_lock::EXIT_STATE_BUSY,
        sonitor::reload::EXIT_NO_DAEMON,
    ] {
        assert!(
            page.contains(&format!(".TP\n.B {status}\n")),
            "exit status {status} is not in man/sonitor.1"
        );
    }
    // The health values, as the configuration guide lists them for `<machine>/health`.
    let guide = std::fs::read_to_string(common::workspace().join("configs/README.md")).unwrap();
    let row = guide
        .lines()
        .find(|l| l.starts_with("| `<machine>/health` |"))
        .expect("the guide's health row");
    let values: Vec<&str> = row
        .split('`')
        .skip(3)
        .step_by(2)
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert_eq!(
        values,
        ["OK", "SILENT", "CLIPPING", "NO_AUDIO", "NO_SCORES"],
        "{row}"
    );
    for v in values {
        assert!(
            page.contains(&format!(".TP\n.B {v}\n")),
            "health {v} is not in man/sonitor.1"
        );
    }
    if Command::new("groff").arg("-v").output().is_ok() {
        let o = Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(common::workspace().join("man/sonitor.1"))
            .output()
            .unwrap();
        let warnings = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && warnings.trim().is_empty(),
            "{warnings}"
        );
    } else {
        eprintln!("groff not installed: the page's rendering was not checked");
    }
}

/// `sonitor --version` names the commit the binary was built from, so that a report from the field (a panic's
/// line carries the same) names its source.
#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(common::workspace())
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(head) = head else {
        eprintln!("skipped: not a git checkout");
        return;
    };
    let head = String::from_utf8(head.stdout).unwrap().trim().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        v.trim(),
        format!("sonitor {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

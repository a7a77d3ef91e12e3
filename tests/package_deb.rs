//! `scripts/package-deb`: the Debian package holds what the unit and the documentation name, installs its
//! configuration as a conffile, and its binary runs the shipped model from where the package puts it (`sonitor
//! demo` from any directory). Built from this test build's binary (gzip, for speed); the release and cross builds
//! are packaged the same way.

mod common;

use std::process::{Command, Output};

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn script() -> Command {
    Command::new(common::workspace().join("scripts/package-deb"))
}

#[test]
fn the_package_installs_a_unit_a_conffile_and_a_binary_that_finds_its_model() {
    if run(Command::new("sh").args(["-c", "command -v dpkg-deb"]))
        .status
        .code()
        != Some(0)
    {
        eprintln!("skipped: no dpkg-deb (not a Debian machine)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("deb");
    let o = run(script()
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_sonitor"),
            "--compress",
            "gzip",
            "--out",
        ])
        .arg(&out));
    assert!(o.status.success(), "{}", text(&o));
    let arch = String::from_utf8(run(Command::new("dpkg").arg("--print-architecture")).stdout)
        .unwrap()
        .trim()
        .to_string();
    let deb = out.join(format!("sonitor_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
    assert!(deb.is_file(), "no {}: {}", deb.display(), text(&o));

    // The control fields.
    let field = |f: &str| {
        String::from_utf8(run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "sonitor");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("Architecture"), arch);
    assert!(
        field("Depends").contains("libasound2"),
        "{}",
        field("Depends")
    );

    // Debian's own checker, where it is installed (CI installs it): nothing to say.
    if run(Command::new("sh").args(["-c", "command -v lintian"]))
        .status
        .success()
    {
        let o = run(Command::new("lintian").arg(&deb));
        let report = text(&o);
        eprintln!("lintian:\n{report}");
        let tags: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with(['E', 'W', 'I']) && l.contains(": sonitor"))
            .collect();
        assert!(tags.is_empty(), "lintian: {tags:?}");
    } else {
        eprintln!("lintian not installed: the package's Debian checks were not run");
    }

    // Every file root's, the configuration a conffile, the maintainer scripts executable and valid sh.
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    for l in listing.lines() {
        assert!(l.contains(" root/root "), "not root's: {l}");
    }
    assert!(
        listing.contains("./usr/share/man/man1/sonitor.1.gz"),
        "{listing}"
    );
    let control = d.path().join("control");
    assert!(
        run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control))
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/sonitor/sonitor.toml\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let p = control.join(s);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o111,
            0o111,
            "{s}"
        );
        let o = run(Command::new("sh").arg("-n").arg(&p));
        assert!(o.status.success(), "{s}: {}", text(&o));
    }

    // Unpacked: the unit starts the packaged binary, and its documentation is there.
    let root = d.path().join("root");
    assert!(run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .status
        .success());
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/sonitor.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart");
    let binary = exec.split_whitespace().next().unwrap();
    assert_eq!(binary, "/usr/bin/sonitor", "{exec}");
    // `systemctl reload` runs the packaged binary too, which waits for the daemon's answer.
    let reload = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("an ExecReload");
    assert!(reload.starts_with("/usr/bin/sonitor reload "), "{reload}");
    let in_root = |p: &str| root.join(p.trim_start_matches('/'));
    assert!(in_root(binary).is_file());
    let docs = unit
        .lines()
        .find_map(|l| l.strip_prefix("Documentation="))
        .expect("a Documentation line");
    for doc in docs.split_whitespace() {
        let path = doc.strip_prefix("file://").unwrap();
        assert!(in_root(path).is_file(), "{doc} is not in the package");
    }
    // Every link of the packaged documentation leads somewhere on the installed system: to a file the package
    // ships (relative to /usr/share/doc/sonitor, or absolute), or out to the web. The repository-only files the
    // README names (the benchmarks, the ablation's runs) are named, not linked.
    let doc = in_root("/usr/share/doc/sonitor");
    for name in ["README.md", "configuration.md"] {
        let text = std::fs::read_to_string(doc.join(name)).unwrap();
        let links: Vec<&str> = text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
            .collect();
        if name == "README.md" {
            assert!(
                links.contains(&"./configuration.md") && links.contains(&"./examples/sonitor.toml"),
                "{links:?}"
            );
            assert!(text.contains("`BENCHMARKS.md` (in the source repository)"));
        }
        for link in links {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with('#')
            {
                continue;
            }
            let target = match link.strip_prefix('/') {
                Some(_) => in_root(link),
                None => doc.join(link),
            };
            assert!(
                target.is_file(),
                "{name}: the link ({link}) leads to no file of the package"
            );
        }
    }
    assert_eq!(
        std::fs::read(in_root("/etc/sonitor/sonitor.toml")).unwrap(),
        std::fs::read(common::workspace().join("configs/one-machine.toml")).unwrap()
    );

    // The packaged binary, run where there is no models/default, finds the model installed beside it.
    let cwd = d.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = run(Command::new(in_root(binary))
        .args(["demo", "--quiet", "--json"])
        .current_dir(&cwd));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["detected"], true, "{}", text(&o));
    let recording = in_root("/usr/share/sonitor/models/default/demo.wav");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("recording {}", recording.display())),
        "{}",
        text(&o)
    );

    // The combined bundle, its graph and recording links to the default's, loads and runs the demo as well.
    let combined = in_root("/usr/share/sonitor/models/combined");
    assert!(std::fs::symlink_metadata(combined.join("model.onnx"))
        .unwrap()
        .file_type()
        .is_symlink());
    let o = run(Command::new(in_root(binary))
        .args(["demo", "--quiet", "--json", "--model"])
        .arg(&combined)
        .current_dir(&cwd));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["detected"], true, "{}", text(&o));
    assert!(
        summary["model_id"].as_str().unwrap().ends_with("-combined"),
        "{}",
        text(&o)
    );

    // A binary is never packaged under another architecture's name, nor a file that is no executable.
    let o = run(script()
        .args([
            "--target",
            "aarch64-unknown-linux-gnu",
            "--binary",
            env!("CARGO_BIN_EXE_sonitor"),
            "--out",
        ])
        .arg(&out));
    if arch != "arm64" {
        assert!(!o.status.success());
        assert!(
            text(&o).contains("not aarch64-unknown-linux-gnu"),
            "{}",
            text(&o)
        );
    }
    let not_elf = d.path().join("sonitor");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let o = run(script()
        .arg("--binary")
        .arg(&not_elf)
        .arg("--out")
        .arg(&out));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is not an ELF executable"),
        "{}",
        text(&o)
    );
}

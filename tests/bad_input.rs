//! Bad input: each mistake gives a message that names it, and `validate` / `run` exit with status 78
//! (EX_CONFIG, which the systemd unit does not restart on).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use prost::Message;
use sonitor_core::bundle::Bundle;
use tract_onnx::pb;

fn sonitor(args: &[&str], config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn expect_78(config: &Path, needles: &[&str]) {
    for cmd in ["validate", "run"] {
        let (code, text) = sonitor(&[cmd], config);
        assert_eq!(code, 78, "`sonitor {cmd}` should exit 78; output:\n{text}");
        for n in needles {
            assert!(
                text.contains(n),
                "`sonitor {cmd}` should say '{n}'; output:\n{text}"
            );
        }
    }
}

/// A copy of the configuration `good`, named `name` beside it, with each `(from, to)` replaced.
fn edited(good: &Path, name: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(good).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "'{from}' is not in {}", good.display());
        text = text.replace(from, to);
    }
    let p = good.with_file_name(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `node` (reading "projected") appended to `g` to give the embedding, which the graph's last node gave until
/// now (as "projected").
fn after_embedding(g: &mut pb::GraphProto, node: pb::NodeProto) {
    after_the_embedding(
        g,
        [pb::NodeProto {
            output: vec!["embedding".into()],
            ..node
        }],
    );
}

/// The bundle in `from` with a node `op` named 'broken' (with `attribute`) after the embedding, as `to`.
fn broken_last_node(
    from: &Path,
    to: &Path,
    op: &str,
    attribute: Vec<pb::AttributeProto>,
) -> PathBuf {
    rebuilt_bundle(from, to, |g| {
        after_embedding(
            g,
            pb::NodeProto {
                name: "broken".into(),
                ..common::node(op, &["projected"], "embedding", attribute)
            },
        )
    })
}

/// The bundle in `from` with a MaxPool that lost its input (named 'broken', its output the embedding) as `to`:
/// tract indexes past the node's empty list of inputs while it loads the graph, and panics.
fn lost_input_bundle(from: &Path, to: &Path) -> PathBuf {
    rebuilt_bundle(from, to, |g| {
        after_embedding(
            g,
            pb::NodeProto {
                name: "broken".into(),
                input: vec![],
                ..common::node(
                    "MaxPool",
                    &[],
                    "embedding",
                    vec![common::ints("kernel_shape", &[1])],
                )
            },
        )
    })
}

/// The bundle in `from` with its graph changed by `edit`, written (with a checksum that fits) as `to`.
fn rebuilt_bundle(from: &Path, to: &Path, edit: impl FnOnce(&mut pb::GraphProto)) -> PathBuf {
    let b = Bundle::load(from).unwrap();
    let mut proto = pb::ModelProto::decode(b.onnx_bytes()).unwrap();
    edit(proto.graph.as_mut().unwrap());
    Bundle::write(to, &b.manifest, &proto.encode_to_vec()).unwrap();
    to.to_path_buf()
}

/// Puts `nodes` after the graph's last layer: its output is renamed `projected`, which they take, and they give
/// the `embedding`.
fn after_the_embedding<const N: usize>(g: &mut pb::GraphProto, nodes: [pb::NodeProto; N]) {
    let last = g
        .node
        .iter_mut()
        .find(|n| n.output[0] == "embedding")
        .unwrap();
    last.output[0] = "projected".into();
    last.name = "projected".into();
    g.node.extend(nodes);
}

fn file_device(wav: &Path) -> String {
    common::file_device(wav, "realtime = false\n")
}

#[test]
fn every_kind_of_bad_input_is_named_with_exit_78() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::pump());

    // A good configuration validates.
    // (`common::config` always writes sonitor.toml: keep the good one under its own name.)
    let good = d.path().join("good.toml");
    std::fs::copy(
        common::config(d.path(), &file_device(&wav), &b.dir, 1883, ""),
        &good,
    )
    .unwrap();
    let (code, text) = sonitor(&["validate"], &good);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK: 1 machine"), "{text}");
    // Its output to a reader that has gone (`sonitor validate … | head`): the process ends quietly by SIGPIPE,
    // as any Unix tool does, not with a panic ("failed printing to stdout", status 101).
    let out = common::output_to_a_gone_reader(
        Command::new(env!("CARGO_BIN_EXE_sonitor"))
            .args(["validate", "--config"])
            .arg(&good),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
    // A check keeps nothing it writes: the state directory `run` would make is not made.
    assert!(
        !d.path().join("state").exists(),
        "validate made the state directory"
    );
    assert!(
        std::fs::read_dir(d.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".sonitor-probe")),
        "a probe was left"
    );

    // Malformed TOML.
    let p = d.path().join("malformed.toml");
    std::fs::write(&p, "node_id = \"x\"\n[[machines]\nname = 3\n").unwrap();
    expect_78(&p, &["malformed.toml"]);

    // An unknown key (a typo) is named.
    let p = edited(&good, "typo.toml", &[("raise_k", "rise_k")]);
    expect_78(&p, &["rise_k"]);

    // A device with an empty name, a file source with an empty path: said so, not "device '' is not defined
    // (defined: )" and "file  does not exist"; an empty state_dir, which `run` took as the working directory.
    let state_line = format!("state_dir = \"{}\"", d.path().join("state").display());
    let wav_line = format!("path = \"{}\"", wav.display());
    for (name, from, to, said) in [
        (
            "empty-name.toml",
            "name = \"mic\"",
            "name = \"\"",
            "devices[0].name is empty",
        ),
        (
            "empty-state.toml",
            state_line.as_str(),
            "state_dir = \"\"",
            "state_dir is empty",
        ),
        (
            "empty-path.toml",
            wav_line.as_str(),
            "path = \"\"",
            "device 'mic': `path` is empty",
        ),
    ] {
        expect_78(&edited(&good, name, &[(from, to)]), &[said]);
    }
    // A relative one is taken from where sonitor starts, not from the file's directory: a warning.
    let p = edited(
        &good,
        "relative-state.toml",
        &[(state_line.as_str(), "state_dir = \"here\"")],
    );
    let (code, text) = sonitor(&["validate"], &p);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "warning: state_dir here is relative: it is taken from the directory sonitor starts in"
        ),
        "{text}"
    );
    assert!(
        !Path::new("here").exists(),
        "validate made the relative state_dir"
    );

    // A duration that is not one: its key, the machine, its value and what a duration looks like.
    let p = edited(
        &good,
        "duration.toml",
        &[("raise_k = 2", "raise_k = 2\nmin_duration = \"forever\"")],
    );
    expect_78(
        &p,
        &[
            "machine 'pump-1': machines[0].min_duration = \"forever\" is not a duration",
            "e.g. \"500ms\", \"30s\"",
        ],
    );

    // A value of the wrong type, which the config crate would convert (channel 1.5 into channel 2): refused.
    let p = edited(&good, "fraction.toml", &[("channel = 0", "channel = 1.5")]);
    expect_78(
        &p,
        &["machine 'pump-1': machines[0].channel = 1.5 is not a whole number"],
    );

    // A missing bundle.
    let p = common::config(
        d.path(),
        &file_device(&wav),
        &d.path().join("no-such-bundle"),
        1883,
        "",
    );
    expect_78(&p, &["no-such-bundle: the folder does not exist"]);

    // A bundle without the configured section.
    let p = edited(
        &good,
        "section.toml",
        &[("pump/section_00", "fan/section_03")],
    );
    expect_78(&p, &["no section 'fan/section_03'", "pump/section_00"]);

    // A corrupted model file (checksum).
    let broken = d.path().join("broken-bundle");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["manifest.json", "model.onnx"] {
        std::fs::copy(b.dir.join(f), broken.join(f)).unwrap();
    }
    let mut onnx = std::fs::read(broken.join("model.onnx")).unwrap();
    onnx.push(0);
    std::fs::write(broken.join("model.onnx"), onnx).unwrap();
    let p = common::config(d.path(), &file_device(&wav), &broken, 1883, "");
    expect_78(&p, &["checksum mismatch"]);

    // A graph tract cannot run, behind a manifest that agrees with it: an operator tract lacks, and an output
    // without a shape that gives twice the manifest's embedding_dim. `validate` builds and runs the graph as
    // `run` would, and names the bundle and the reason.
    let unrunnable = rebuilt_bundle(&b.dir, &d.path().join("unknown-op-bundle"), |g| {
        let log = g.node.iter_mut().find(|n| n.op_type == "Log").unwrap();
        log.op_type = "LogOfTheFuture".into();
    });
    let p = common::config(d.path(), &file_device(&wav), &unrunnable, 1883, "");
    expect_78(&p, &["unknown-op-bundle", "LogOfTheFuture"]);
    let doubled = rebuilt_bundle(&b.dir, &d.path().join("doubled-bundle"), |g| {
        after_embedding(
            g,
            common::node(
                "Concat",
                &["projected", "projected"],
                "doubled",
                vec![common::int("axis", 1)],
            ),
        );
        if let Some(pb::type_proto::Value::TensorType(t)) =
            g.output[0].r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.shape = None;
        }
    });
    let p = common::config(d.path(), &file_device(&wav), &doubled, 1883, "");
    expect_78(
        &p,
        &["doubled-bundle", "returned 48 values", "embedding_dim 24"],
    );

    // Graphs that tract would panic on (or, with a padding of 2^40, loop over for hours) rather than refuse:
    // a pooling with a stride of 0 and a Flatten on an axis no tensor has (which a 32-bit CPU would wrap to 0)
    // are refused before tract sees them, a pooling that lost its input is tract's panic turned into the
    // refusal. Before, `validate` and `run` died of the panic (status 101 and 70).
    let lost = lost_input_bundle(&b.dir, &d.path().join("lost-input-bundle"));
    let p = common::config(d.path(), &file_device(&wav), &lost, 1883, "");
    expect_78(
        &p,
        &[
            "lost-input-bundle",
            "tract stopped on the graph (",
            "malformed",
        ],
    );
    for (name, op, attribute, needle) in [
        (
            "zero-stride-bundle",
            "MaxPool",
            vec![
                common::ints("kernel_shape", &[1]),
                common::ints("strides", &[0]),
            ],
            "node 'broken' (MaxPool): strides [0]: each must be 1 to",
        ),
        (
            "far-axis-bundle",
            "Flatten",
            vec![common::int("axis", 1 << 40)],
            "node 'broken' (Flatten): axis 1099511627776: no tensor has that many axes",
        ),
    ] {
        let broken = broken_last_node(&b.dir, &d.path().join(name), op, attribute);
        let p = common::config(d.path(), &file_device(&wav), &broken, 1883, "");
        expect_78(&p, &[name, needle, "malformed", "re-export the graph"]);
    }

    // MQTT files that exist but cannot serve: a CA file that is no certificate, a password file that is not
    // text. `run` builds the MQTT options from them; `validate` builds them too.
    let ca = d.path().join("garbage-ca.pem");
    std::fs::write(&ca, "this is not a certificate\n").unwrap();
    let p = common::config(
        d.path(),
        &file_device(&wav),
        &b.dir,
        1883,
        &format!(
            "[mqtt.tls]\nenabled = true\nca_file = \"{}\"\n",
            ca.display()
        ),
    );
    expect_78(
        &p,
        &["mqtt.tls: ", "garbage-ca.pem: no CA certificate found"],
    );
    let pw = d.path().join("password");
    std::fs::write(&pw, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let p = edited(
        &good,
        "password.toml",
        &[(
            "[mqtt]\n",
            &format!(
                "[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
                pw.display()
            ),
        )],
    );
    expect_78(&p, &["mqtt.password_file ", "valid UTF-8"]);

    // A channel the input does not have.
    let p = edited(&good, "channel.toml", &[("channel = 0", "channel = 3")]);
    expect_78(&p, &["channel 3 does not exist", "1 channel(s)"]);

    // A recording cut short: the header announces more frames than the file holds.
    let cut = d.path().join("cut.wav");
    let bytes = std::fs::read(&wav).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let p = common::config(d.path(), &file_device(&cut), &b.dir, 1883, "");
    expect_78(&p, &["device 'mic'", "cut.wav", "truncated"]);

    // A recording shorter than one analysis window, played once: nothing would ever be scored. And an empty
    // one (a header without data).
    let short = d.path().join("short.wav");
    common::write_wav(&short, &common::pump()[..4_000]);
    let p = common::config(d.path(), &file_device(&short), &b.dir, 1883, "");
    expect_78(&p, &["short.wav holds 0.25 s of audio", "analysis window"]);
    // Looped, too: each pass ends in a gap, so no window ever fills (the daemon said NO_SCORES after 10 s).
    let looped = file_device(&short) + "at_end = \"loop\"\n";
    let p = common::config(d.path(), &looped, &b.dir, 1883, "");
    expect_78(
        &p,
        &["short.wav holds 0.25 s of audio", "each pass is cut off"],
    );
    let empty = d.path().join("empty.wav");
    common::write_wav(&empty, &[]);
    let looped = file_device(&empty) + "at_end = \"loop\"\n";
    let p = common::config(d.path(), &looped, &b.dir, 1883, "");
    expect_78(&p, &["empty.wav holds 0.00 s of audio"]);

    // A capture device id that cannot name a device (an audio host this build does not have). One that could
    // but is not there now is only a warning (tests/capture_late_device.rs).
    let dev = "[[devices]]\nname = \"mic\"\nsource = \"capture\"\ndevice = \"jack:system\"\n";
    let p = common::config(d.path(), dev, &b.dir, 1883, "");
    expect_78(&p, &["device 'mic': device 'jack:system'"]);

    // Several problems at once are all listed.
    let p = edited(
        &good,
        "several.toml",
        &[
            ("raise_k = 2", "raise_k = 7"),
            ("listen = \"127.0.0.1:", "listen = \"0.0.0.0:"),
        ],
    );
    expect_78(&p, &["raise_k (7) <= raise_n (3)", "loopback"]);

    // A missing configuration file; a directory where the file should be.
    expect_78(&d.path().join("nope.toml"), &["nope.toml", "no such file"]);
    expect_78(d.path(), &["is a directory, not a configuration file"]);
    // A FIFO (the config crate called it "not found", and an open would wait for a writer).
    let fifo = d.path().join("fifo.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    expect_78(
        &fifo,
        &[
            "fifo.toml",
            "not a regular file",
            "not a configuration file",
        ],
    );
    // `status` too, which looks for the state directory in the file's text: it waited on the FIFO for ever.
    let status = Command::new("timeout")
        .args(["20", env!("CARGO_BIN_EXE_sonitor"), "status", "--config"])
        .arg(&fifo)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stderr);
    assert!(
        !matches!(status.status.code(), Some(0 | 124)) && said.contains("not a regular file"),
        "{status:?}"
    );
    // A missing file is said once, as the problem it is: not also as a file that "does not say where the state
    // directory is", nor as one a reload would refuse.
    let status = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["status", "--config"])
        .arg(d.path().join("nope.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(78), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.contains("nope.toml: no such file")
            && said.contains("found through the state directory"),
        "{said}"
    );
}

/// Runs `sonitor ARGS --config CONFIG` in a private mount namespace where `state` is a 256 KiB tmpfs prepared
/// by the shell commands `setup` (`$STATE` is its path); afterwards the files left in it are listed on a line
/// `LEFT: …`. `None` where no tmpfs can be mounted here (not root, and no user namespaces): the caller skips.
fn in_small_tmpfs(state: &Path, setup: &str, args: &str, config: &Path) -> Option<(i32, String)> {
    with_state_tmpfs(
        state,
        config,
        &format!(
            "{setup}\ntimeout 60 \"$SONITOR\" {args} --config \"$CONFIG\" 2>&1\nrc=$?\n\
             echo \"LEFT: $(ls -A \"$STATE\" | tr '\\n' ' ')\"\nexit $rc\n"
        ),
    )
}

/// Runs the shell commands `body` in a private mount namespace where `state` is a 256 KiB tmpfs: `$STATE` is its
/// path, `$CONFIG` the configuration, `$SONITOR` the daemon and `$LOG` a file beside the state for a daemon's log.
/// Its status and output (stdout, then stderr); `None` where no tmpfs can be mounted here (not root, and no user
/// namespaces): the caller skips.
fn with_state_tmpfs(state: &Path, config: &Path, body: &str) -> Option<(i32, String)> {
    std::fs::create_dir_all(state).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=256k sonitor-test \"$STATE\" || exit 90\necho MOUNTED\n{body}"
    );
    let out = common::private_mount_namespace()
        .args(["sh", "-c", &script])
        .env("STATE", state)
        .env("CONFIG", config)
        .env("LOG", state.with_file_name("daemon.log"))
        .env("SONITOR", env!("CARGO_BIN_EXE_sonitor"))
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !text.contains("MOUNTED") {
        eprintln!("skipped: no tmpfs can be mounted in a private mount namespace here:\n{text}");
        return None;
    }
    Some((out.status.code().unwrap_or(-1), text))
}

/// A state directory on a full filesystem: an empty file can still be created there, a write cannot. That is a
/// state of the disk, not of the configuration: `validate` passes with a warning that names the directory, the
/// OS error and what to do, and `run` starts with the same warning (a refusal, exit 78, would keep systemd from
/// ever restarting it once space is freed); neither leaves a probe file behind. On a filesystem with room for
/// less than a full outbox, `validate` passes with a warning. A read-only one (ext4's `errors=remount-ro` on an SD
/// card) is the same: it was refused with exit 78, so after the next restart no machine was watched; now `run`
/// starts, with its state in memory, whether an earlier daemon left its lock file there or not.
/// A recording played once that gives fewer windows than a machine's raise_k can never raise its alarm:
/// `validate` (and the start, which runs the same check) warns, naming the machine, the file's length and what
/// it needs. Looped, or long enough, it does not.
/// A configuration file this user may not read, or in a folder it may not enter: "permission denied", with the
/// uid asking and what to do. It said "no such file" of the second, and a bare "Permission denied (os error 13)"
/// of the first. Root reads both anyway: there the commands run as `nobody` through `setpriv`, skipped with a word
/// where it is missing.
#[test]
fn a_configuration_this_user_may_not_read_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let setpriv = Path::new("/usr/bin/setpriv");
    if root && !setpriv.exists() {
        eprintln!("skipped: root reads any file, and there is no setpriv to run as another user");
        return;
    }
    let unreadable = d.path().join("unreadable.toml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sonitor.toml"),
        &unreadable,
    )
    .unwrap();
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o200)).unwrap();
    let closed = d.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::copy(&unreadable, closed.join("sonitor.toml")).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o000)).unwrap();
    let as_user = || {
        if root {
            let mut c = Command::new(setpriv);
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_sonitor"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_sonitor"))
        }
    };
    // The folder that bars the way is named, with what to do about it, not "a folder on its way".
    let pass_closed = format!("chmod a+x {}", closed.display());
    for (file, what, advice) in [
        (
            unreadable.clone(),
            "may not read it",
            format!("chmod a+r {}", unreadable.display()),
        ),
        (
            closed.join("sonitor.toml"),
            "may not look into a folder above it",
            pass_closed.clone(),
        ),
    ] {
        for cmd in ["validate", "run", "status"] {
            let out = as_user()
                .args([cmd, "--config"])
                .arg(&file)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{cmd} {}: {text}",
                file.display()
            );
            assert!(
                text.contains(&format!(
                    "{}: permission denied: this user (uid ",
                    file.display()
                )) && text.contains(what)
                    && text.contains(&advice)
                    && text.contains("e.g. with sudo")
                    && !text.contains("no such file"),
                "{cmd} {}: {text}",
                file.display()
            );
            // `status` does not claim to have found a daemon it could not look for.
            assert!(
                cmd != "status"
                    || text.contains(&format!(
                        "no daemon was looked for: it is found through the state directory the file names, which \
                         cannot be read from it (`sudo sonitor status --config {}` can)",
                        file.display()
                    )),
                "{text}"
            );
        }
    }
    // The service's own start (its stderr the journal, as `JOURNAL_STREAM` names it): no "run it with sudo",
    // which would not change the user the service runs as; what makes the file readable to it.
    {
        use std::os::unix::fs::MetadataExt as _;
        let log = d.path().join("journal.txt");
        let f = std::fs::File::create(&log).unwrap();
        let m = f.metadata().unwrap();
        let status = as_user()
            .args(["run", "--config"])
            .arg(&unreadable)
            .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
            .stdout(std::process::Stdio::null())
            .stderr(f)
            .status()
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(78), "{text}");
        assert!(
            text.contains(&format!(
                "<3>  - {}: permission denied: this user (uid ",
                unreadable.display()
            )) && text.contains(", the service's user) may not read it; make it readable")
                && text.contains(&format!("chmod a+r {}", unreadable.display()))
                && !text.contains("sudo"),
            "{text}"
        );
    }
    // A readable configuration whose MQTT password file sits behind that folder: the folder named, not "does not
    // exist" or a bare "permission denied on a directory on its way".
    let readable = d.path().join("readable.toml");
    std::fs::copy(&unreadable, &readable).unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = closed.join("mqtt-password");
    let out = as_user()
        .args(["validate", "--config"])
        .arg(&readable)
        .env("SONITOR_MQTT__USERNAME", "sonitor")
        .env("SONITOR_MQTT__PASSWORD_FILE", &secret)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!(
            "mqtt.password_file {} cannot be reached: this user may not pass a folder on its way; make the folder \
             {} on its way passable",
            secret.display(),
            closed.display()
        )) && text.contains(&pass_closed),
        "{text}"
    );
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_recording_too_short_to_raise_an_alarm_is_warned_of() {
    let d = tempfile::tempdir().unwrap();
    // 0.63 s: one window of 0.5 s (hop 0.25 s); the machine's raise_k is 2, which needs 0.75 s.
    let (b, wav) = common::bundle_and_wav(d.path(), "short.wav", &common::pump()[..10_080]);
    let p = common::config(d.path(), &file_device(&wav), &b.dir, 1883, "");
    let (code, text) = sonitor(&["validate"], &p);
    assert_eq!(code, 0, "{text}");
    let said = format!(
        "warning: machine 'pump-1': {} holds 0.63 s of audio: 1 window(s) of 0.5 s every 0.25 s, and raise_k = 2 \
         needs 2 above the threshold (0.75 s of audio): played once, it can never raise an alarm",
        wav.display()
    );
    assert!(text.contains(&said), "{text}");
    let looped = file_device(&wav) + "at_end = \"loop\"\n";
    let p = common::config(d.path(), &looped, &b.dir, 1883, "");
    let (code, text) = sonitor(&["validate"], &p);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("can never raise"), "{text}");
    let long = d.path().join("long.wav");
    common::write_wav(&long, &common::pump()[..12_000]);
    let p = common::config(d.path(), &file_device(&long), &b.dir, 1883, "");
    let (code, text) = sonitor(&["validate"], &p);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("can never raise"), "{text}");
}

/// An input that no machine names is warned of: a typo in a machine's `device`, or one left behind.
#[test]
fn an_input_no_machine_uses_is_warned_of() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::pump());
    let devices =
        file_device(&wav) + "\n" + &file_device(&wav).replace("name = \"mic\"", "name = \"spare\"");
    let p = common::config(d.path(), &devices, &b.dir, 1883, "");
    let (code, text) = sonitor(&["validate"], &p);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: device 'spare' is used by no machine"),
        "{text}"
    );
    assert!(
        !text.contains("device 'mic' is used by no machine"),
        "{text}"
    );
}

#[test]
fn a_state_dir_that_cannot_take_a_write_is_refused_or_warned() {
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::pump());
    let device = file_device(&wav) + "at_end = \"exit\"\n";
    let config = common::config(d.path(), &device, &b.dir, 1883, "");
    let state = d.path().join("state");
    let fill = "head -c 1048576 /dev/zero > \"$STATE/fill\" 2>/dev/null";
    for cmd in ["validate", "run"] {
        let Some((code, text)) = in_small_tmpfs(&state, fill, cmd, &config) else {
            return;
        };
        assert_eq!(code, 0, "`sonitor {cmd}` on a full state_dir:\n{text}");
        for n in [
            &format!("state_dir {}: ", state.display()),
            "No space left on device",
            "kept in memory only until it has room",
            "free space on its filesystem",
            "LEFT: fill ",
        ] {
            assert!(
                text.contains(n),
                "`sonitor {cmd}` should say '{n}':\n{text}"
            );
        }
        assert!(!text.contains(".sonitor-probe"), "{text}");
    }
    let (code, text) = in_small_tmpfs(&state, "", "validate", &config).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("warning: state_dir {}: only 0.2", state.display()))
            && text.contains("less than a full outbox takes")
            && text.contains("LEFT: \n"),
        "{text}"
    );
    let ro = "mount -o remount,bind,ro \"$STATE\"";
    let locked_ro = "echo 1 > \"$STATE/sonitor.lock\"; mount -o remount,bind,ro \"$STATE\"";
    for (setup, cmd) in [(ro, "validate"), (ro, "run"), (locked_ro, "run")] {
        let (code, text) = in_small_tmpfs(&state, setup, cmd, &config).unwrap();
        assert_eq!(code, 0, "`sonitor {cmd}` after `{setup}`:\n{text}");
        for n in [
            "Read-only file system",
            "kept in memory only until it is writable again",
            "remount it read-write",
        ] {
            assert!(text.contains(n), "should say '{n}':\n{text}");
        }
        if cmd == "run" {
            assert!(text.contains("running: 1 machine(s)"), "{text}");
        }
    }
}

/// A state filesystem filled by something else while the daemon runs: the save at the stop goes into the space
/// kept for it (`.sonitor-reserve`), so that the next start knows the alarm states, mutes and thresholds set over
/// MQTT (they were lost, with only "cannot save" in the log).
#[test]
fn a_full_state_filesystem_still_takes_the_saved_state() {
    let d = tempfile::tempdir().unwrap();
    let (_b, config) = looped_pump(d.path());
    let script = "\"$SONITOR\" run --config \"$CONFIG\" > \"$LOG\" 2>&1 &\npid=$!\n\
         for i in $(seq 300); do [ -f \"$STATE/.sonitor-reserve\" ] && break; sleep 0.1; done\n\
         head -c 1048576 /dev/zero > \"$STATE/fill\" 2>/dev/null\n\
         sleep 0.2\n\
         kill -TERM $pid; wait $pid; echo \"rc=$?\"\n\
         [ \"$STATE/alarms.json\" -nt \"$STATE/fill\" ] && echo SAVED-AFTER-FILL\n\
         cat \"$LOG\"; echo \"LEFT: $(ls -A \"$STATE\" | tr '\\n' ' ')\"\n";
    let Some((_, text)) = with_state_tmpfs(&d.path().join("state"), &config, script) else {
        return;
    };
    assert!(text.contains("rc=0"), "{text}");
    // The stop's save reached the disk (not only those of the start, before the filesystem was full). (The pause
    // after the fill: file times here are the kernel's tick, which the fill and a quick stop can share.)
    assert!(
        text.contains("the space kept for the saved state")
            && !text.contains("cannot save")
            && text.contains("SAVED-AFTER-FILL"),
        "{text}"
    );
}

/// A state directory that stops taking writes while the daemon runs (here replaced by a file: ENOTDIR, for root
/// too; a read-only remount cannot be made under a daemon that holds its lock file open for writing), then an
/// alarm raised, then a stop: the stop cannot save the open alarm, so the next start will not know it. The log
/// names it, and the exit status says so (73): the stop was not a clean one, and systemd shows the unit as failed.
#[test]
fn a_stop_that_cannot_save_an_open_alarm_exits_with_status_73() {
    let d = tempfile::tempdir().unwrap();
    // Normal, then the fault until well after the stop.
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(5.0, 30.0, 0.0));
    let config = common::file_config(d.path(), &wav, &b.dir, common::PACED_TO_THE_END, "");
    let mut daemon = common::Daemon::start(&config, &[]);
    daemon.wait_log("running:", Duration::from_secs(30));
    let state = d.path().join("state");
    std::fs::rename(&state, d.path().join("state-moved")).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    daemon.wait_log("alarm ON: pump-1", Duration::from_secs(30));
    unsafe {
        libc::kill(daemon.child.id() as i32, libc::SIGTERM);
    }
    let (code, log) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(sonitor::daemon::EXIT_LOST), "{log}");
    assert!(
        log.contains("not saved, so lost at the next start: machine 'pump-1': its alarm is ON"),
        "{log}"
    );
    assert!(
        log.contains(
            "exiting with status 73: 0 alarm message(s) and 1 machine state(s) could not be kept"
        ),
        "{log}"
    );
}

/// A daemon started on a read-only state filesystem (it locks the directory itself) that is remounted read-write
/// while it runs: within a second or two it takes the lock file, with its pid, and saves its states there, so that a daemon
/// started after the remount is refused instead of taking the file beside it. Where an earlier daemon left its
/// lock file (locked read-only, it still names that daemon's pid), the running daemon writes its own pid there:
/// `sonitor reload` signalled the old pid, whatever process has it now, for the daemon's whole life.
#[test]
fn a_read_only_state_dir_made_writable_is_taken_by_the_running_daemon() {
    let d = tempfile::tempdir().unwrap();
    let (_b, config) = looped_pump(d.path());
    for earlier in ["", "echo 999999 > \"$STATE/sonitor.lock\"\n"] {
        let script = format!(
            "{earlier}mount -o remount,bind,ro \"$STATE\"\n\
             \"$SONITOR\" run --config \"$CONFIG\" > \"$LOG\" 2>&1 &\npid=$!\n\
             for i in $(seq 600); do grep -q 'running:' \"$LOG\" && break; sleep 0.1; done\n\
             mount -o remount,bind,rw \"$STATE\"\n\
             for i in $(seq 200); do [ \"$(head -n 1 \"$STATE/sonitor.lock\")\" = $pid ] && break; sleep 0.1; done\n\
             \"$SONITOR\" run --config \"$CONFIG\" > \"$LOG.2\" 2>&1; echo \"second=$?\"\n\
             echo \"LOCK: $(head -n 1 \"$STATE/sonitor.lock\") PID: $pid\"\n\
             \"$SONITOR\" reload --config \"$CONFIG\"; echo \"reload=$?\"\n\
             kill -TERM $pid; wait $pid; echo \"rc=$?\"\n\
             cat \"$LOG\"; echo \"LEFT: $(ls -A \"$STATE\" | tr '\\n' ' ')\"\n"
        );
        let Some((_, text)) = with_state_tmpfs(&d.path().join("state"), &config, &script) else {
            return;
        };
        let pid = text
            .split("PID: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or("?");
        assert!(
            text.contains("second=75")
                && text.contains(&format!("LOCK: {pid} PID: {pid}"))
                && text.contains("reload=0")
                && text.contains("rc=0")
                && text.contains("LEFT: ")
                && text.split("LEFT: ").nth(1).unwrap().contains("alarms.json"),
            "{text}"
        );
        // Without an earlier file the directory itself was locked: the file is taken once it can be made.
        assert_eq!(
            text.contains("not to be made on a read-only filesystem until now): taken again"),
            earlier.is_empty(),
            "{text}"
        );
    }
}

/// The state directory deleted while the daemon runs (a clean-up of /var/lib/sonitor/*): the daemon takes its
/// lock again within a second (5 s allowed here, for a loaded machine) and saves its states there again, so a second daemon on it is refused (exit 75) and
/// `sonitor reload` finds it. Its lock was on a file no longer there: a second daemon started beside it.
#[test]
fn a_state_directory_deleted_under_the_daemon_is_taken_again() {
    let d = tempfile::tempdir().unwrap();
    let (_b, cfg) = looped_pump(d.path());
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(30));
    let state = d.path().join("state");
    let lock = state.join("sonitor.lock");
    assert!(lock.is_file());
    std::fs::remove_dir_all(&state).unwrap();
    daemon.wait_log(
        "was gone (deleted while sonitor runs, or not to be made on a read-only filesystem until now): taken again",
        Duration::from_secs(5),
    );
    // The states are saved just after that line.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !state.join("alarms.json").is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "alarms.json not saved again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{said}");
    assert!(said.contains("runs on the state directory"), "{said}");
    let reload = std::process::Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args([
            "reload",
            "--timeout",
            "20",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(reload.status.code(), Some(0), "{reload:?}");
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// An operator who is neither root nor the daemon's user: `sonitor reload` said "none runs" (69) of a daemon that
/// does run, and advised `--pid`, which this user may not signal either. It exits 77 and names the service's
/// reload. As root only (the operator is `nobody`; the daemon root's).
#[test]
fn a_reload_by_a_user_who_may_not_signal_the_daemon_says_so() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root, to run the daemon as another user than the operator");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_b, cfg) = looped_pump(d.path());
    for entry in [d.path(), &cfg] {
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let Some(exe) = sonitor_for_nobody(d.path()) else {
        return;
    };
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(30));
    let state = d.path().join("state");
    let as_nobody = |args: &[&str]| as_nobody(&exe, args, &cfg);
    // The lock file readable: its pid is known, the signal refused.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = state.join("sonitor.lock");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, text) = as_nobody(&["reload", "--timeout", "5"]);
    assert_eq!(code, 77, "{text}");
    assert!(
        text.contains(&format!(
            "this user (uid 65534) may not signal sonitor (pid {}), which runs as another user",
            daemon.child.id()
        )) && text.contains("`sudo systemctl reload sonitor`"),
        "{text}"
    );
    // The state directory closed to it: which daemon runs is unknown, and not 69 ("none runs") either.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, text) = as_nobody(&["reload", "--timeout", "5"]);
    assert_eq!(code, 77, "{text}");
    assert!(
        text.contains("permission denied") && text.contains("`sudo systemctl reload sonitor`"),
        "{text}"
    );
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// A bundle and a configuration (MQTT off) that replays the pump in real time, looped: a daemon that runs until
/// stopped.
fn looped_pump(dir: &Path) -> (common::TestBundle, PathBuf) {
    let (b, wav) = common::bundle_and_wav(dir, "rec.wav", &common::pump());
    let cfg = common::file_config(
        dir,
        &wav,
        &b.dir,
        "realtime = true\nat_end = \"loop\"\n",
        "",
    );
    (b, cfg)
}

/// SIGHUP refuses, whole, a file that `sonitor validate` refuses (here a section the bundle lacks, which the next
/// start would refuse with exit 78): the running configuration stays, the problem is logged, nothing of the
/// file is applied. A good file afterwards is applied.
#[test]
fn a_reload_refuses_what_validate_refuses() {
    let d = tempfile::tempdir().unwrap();
    let (b, cfg) = looped_pump(d.path());
    let daemon = common::Daemon::start(&cfg, &[]);
    daemon.wait_log("input mic open", Duration::from_secs(20));
    let hup = || unsafe {
        libc::kill(daemon.child.id() as i32, libc::SIGHUP);
    };
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        good.replace("pump/section_00", "fan/section_03")
            .replace("raise_k = 2\n", "raise_k = 2\nthreshold = 0.6\n"),
    )
    .unwrap();
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 78, "{text}");
    hup();
    daemon.wait_log(
        "no section 'fan/section_03' (it has: pump/section_00); keeping the running configuration",
        Duration::from_secs(10),
    );
    // A bundle whose graph tract panics on: refused the same way, and the daemon lives on (the check ran on
    // its main thread, whose panic used to end the process with status 70).
    let broken = lost_input_bundle(&b.dir, &d.path().join("broken-bundle"));
    std::fs::write(
        &cfg,
        good.replace(b.dir.to_str().unwrap(), broken.to_str().unwrap()),
    )
    .unwrap();
    hup();
    daemon.wait_log(
        "broken-bundle/model.onnx: tract stopped on the graph (index out of bounds",
        Duration::from_secs(10),
    );
    let log = daemon.log.lock().unwrap().clone();
    assert!(
        !log.contains("not applied until")
            && !log.contains("reloaded")
            && !log.contains("panicked"),
        "{log}"
    );
    std::fs::write(
        &cfg,
        good.replace("raise_k = 2\n", "raise_k = 2\nthreshold = 0.6\n"),
    )
    .unwrap();
    hup();
    daemon.wait_log(
        "1 machine(s) with new detector settings",
        Duration::from_secs(10),
    );
    assert_eq!(daemon.sigterm_and_wait(), 0);
}

/// A SIGHUP or SIGTERM that comes while `sonitor run` checks its configuration (the models are built and run
/// once) used to end the process by the signal's default action: the handlers were installed only once the daemon
/// started. Now they are installed first: a SIGHUP then is a reload once the daemon runs, a
/// SIGTERM ends it cleanly before anything starts.
///
/// The check is held by the test build's pause point before it reads the bundle (`SONITOR_FAULT_PAUSE=check`,
/// 2 s, said on stderr): the signal is sent once the daemon says it paused. (The bundle's graph used to be a FIFO
/// whose read blocked; a FIFO in a bundle is refused now.)
#[test]
fn signals_during_the_configuration_check_are_taken_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let (_b, cfg) = looped_pump(d.path());
    let paused = "fault: paused at 'check'";
    let pause = [(sonitor::fault::PAUSE_VAR, "check")];

    // SIGHUP during the check: the daemon starts, then reloads the file.
    let daemon = common::Daemon::start(&cfg, &pause);
    daemon.wait_log(paused, Duration::from_secs(60));
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    daemon.wait_log("input mic open", Duration::from_secs(60));
    daemon.wait_log("reloaded", Duration::from_secs(60));
    let log = daemon.log.lock().unwrap().clone();
    assert_eq!(daemon.sigterm_and_wait(), 0, "{log}");

    // SIGTERM during the check: exit 0, nothing started.
    let mut daemon = common::Daemon::start(&cfg, &pause);
    daemon.wait_log(paused, Duration::from_secs(60));
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("stopped before it started") && !log.contains("running:"),
        "{log}"
    );
}

/// A graph that passes every check and fails on some audio only: the embedding is passed through a `Gather`
/// whose index is the spectrum's peak cast to an integer, 0 on silence, far past the one row there is on the pump
/// (tract takes the index unchecked and panics slicing past its data). `validate` accepts it (the graph loads
/// and embeds an all-zero window). Replayed (silence, the pump, silence), the daemon does not die with tract's
/// panic (status 70, and systemd restarting it into the same panic): each loud window is logged (at 1, 2, 4, …
/// failures) and counted as not scored, and after three in a row the machine's health is `NO_SCORES` (on MQTT,
/// retained, and in the log), not an `OK` that hides a machine no longer watched; once windows score again the
/// health is `OK` again.
#[test]
fn a_model_that_fails_on_some_audio_is_reported_not_fatal() {
    let d = tempfile::tempdir().unwrap();
    let pump = common::pump();
    let silence = vec![0.0f32; 16_000 * 2];
    let audio = [&silence[..], &pump[..16_000 * 2], &silence[..]].concat();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &audio);
    let gather = rebuilt_bundle(&b.dir, &d.path().join("gather-bundle"), |g| {
        g.initializer.push(pb::TensorProto {
            name: "rows".into(),
            dims: vec![3],
            data_type: 7,
            int64_data: vec![1, 1, -1],
            ..Default::default()
        });
        after_the_embedding(
            g,
            [
                common::node(
                    "ReduceMax",
                    &["spectrum"],
                    "peak",
                    vec![common::int("keepdims", 0)],
                ),
                common::node("Cast", &["peak"], "peak_index", vec![common::int("to", 7)]),
                common::node("Reshape", &["projected", "rows"], "one_row", vec![]),
                common::node(
                    "Gather",
                    &["one_row", "peak_index"],
                    "embedding",
                    vec![common::int("axis", 0)],
                ),
            ],
        );
    });
    let broker = common::Broker::start(&d.path().join("broker"));
    let rec = common::Recorder::start(broker.port, "recorder-gather");
    let device = common::file_device(&wav, "realtime = true\nat_end = \"exit\"\n");
    let cfg = common::config(d.path(), &device, &gather, broker.port, "");
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");

    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    for said in [
        "pump-1: window at ",
        "not scored: tract stopped on the graph (range start index",
        "out of range for slice of length 24)",
        "dropped, 1 so far (sonitor_inference_errors_total)",
        "dropped, 4 so far (sonitor_inference_errors_total)",
        "pump-1: the last 3 windows could not be scored",
        "health of pump-1: NO_SCORES",
        "pump-1: windows are scored again",
    ] {
        assert!(log.contains(said), "the log should say '{said}':\n{log}");
    }
    // Logged at powers of two, not per window.
    assert!(!log.contains("dropped, 3 so far"), "{log}");
    let health = |m: &[common::Msg]| {
        let mut h = common::on(m, "sonitor/t1/pump-1/health");
        h.dedup();
        h
    };
    rec.wait_for("health OK again", Duration::from_secs(10), |m| {
        health(m).ends_with(&["NO_SCORES".to_string(), "OK".to_string()])
    });
    let h = health(&rec.snapshot());
    assert_eq!(
        h.iter().filter(|v| *v == "NO_SCORES").count(),
        1,
        "health on MQTT: {h:?}"
    );
    let states = common::on(&rec.snapshot(), "sonitor/t1/pump-1/state");
    assert!(
        states
            .iter()
            .any(|s| s.contains("\"health\":\"NO_SCORES\"")),
        "{states:?}"
    );
}

/// A model whose output is not a finite number on the audio (here its embedding times 1e38 twice, the way a
/// model overflows): those windows are dropped and counted, never scored: no alarm on garbage, and the saved
/// state stays readable. (A float recording of huge samples, the way this was first reached, is refused now by
/// the WAV reader, naming the sample.)
#[test]
fn windows_that_do_not_score_as_numbers_are_dropped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let mut audio = common::recording(4.0, 0.0, 0.0);
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &audio);
    let overflowing = rebuilt_bundle(&b.dir, &d.path().join("overflowing"), |g| {
        g.initializer.push(pb::TensorProto {
            name: "huge".into(),
            dims: vec![],
            data_type: 1,
            float_data: vec![1e38],
            ..Default::default()
        });
        after_the_embedding(
            g,
            [
                common::node("Mul", &["projected", "huge"], "big", vec![]),
                common::node("Mul", &["big", "huge"], "embedding", vec![]),
            ],
        );
    });
    let cfg = common::offline_config(d.path(), &wav, &overflowing, "");
    let mut daemon = common::Daemon::start(&cfg, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("(not a finite number: the audio or the model's output is not finite); dropped, 1 so far"),
        "{log}"
    );
    assert!(!log.contains("alarm ON"), "{log}");
    let saved = std::fs::read_to_string(d.path().join("state/alarms.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert!(saved["pump-1"]["event"].is_null(), "{saved}");

    // The float recording of huge samples: refused before anything runs, naming the sample.
    for x in &mut audio[16_000..24_000] {
        *x = 1e30;
    }
    let huge = d.path().join("huge.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&huge, spec).unwrap();
    for &x in &audio {
        w.write_sample(x).unwrap();
    }
    w.finalize().unwrap();
    let cfg = common::offline_config(d.path(), &huge, &b.dir, "");
    expect_78(&cfg, &["huge.wav", "sample 16000 is 1e30, beyond ±16"]);
}

/// A state directory an earlier run left with files another user owns (a `sudo sonitor run` before the service's
/// own user): `validate` said OK, and `run` exited 1 on the lock file, which `Restart=on-failure` retried for
/// ever; with the lock mended, every alarm was kept in memory only (the outbox not writable). Both are named,
/// exit 78, by `validate` as by `run`, each time with every entry another user owns and the one `chown` that
/// mends them (review23: one refusal per start, lock, then outbox, then clips, each with its own advice). Clip
/// folders it cannot write are a warning: the alarms do not need them. And such a run is refused in the first
/// place: root's `run` on a state directory another user owns. As root only (the check runs the daemon as
/// `nobody`).
#[test]
fn state_files_left_by_another_user_are_named() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make files another user owns");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(3.0, 0.0, 0.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    let state = d.path().join("state");
    std::fs::create_dir_all(state.join("outbox")).unwrap();
    std::fs::write(state.join("sonitor.lock"), "1\n").unwrap();
    // Everything readable, the state directory the service user's; the lock file and the outbox root's.
    for entry in walk(d.path()) {
        let mode = if entry.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let chown = give_to_nobody;
    chown(&state);
    let Some(exe) = sonitor_for_nobody(d.path()) else {
        return;
    };
    let as_nobody = |cmd: &str| as_nobody(&exe, &[cmd], &cfg);
    // Root's own run there is refused before it writes anything.
    let (code, text) = sonitor(&["run"], &cfg);
    assert_eq!(code, 78, "{text}");
    assert!(
        text.contains(
            "belongs to uid 65534 (with the shipped unit, the user the service runs as), and this sonitor runs as root"
        ) && text.contains("sudo setpriv --reuid=65534 --regid=65534"),
        "{text}"
    );
    let chown_all = format!("`sudo chown -R 65534:65534 {}`", state.display());
    for cmd in ["validate", "run"] {
        let (code, text) = as_nobody(cmd);
        assert_eq!(code, 78, "{cmd}: {text}");
        assert!(
            text.contains("sonitor.lock to write")
                && text.contains(
                    "2 entries in it belong to another user (root: a `sudo sonitor run`?): outbox, sonitor.lock;"
                )
                && text.contains(&chown_all),
            "{cmd}: {text}"
        );
    }
    chown(&state.join("sonitor.lock"));
    for cmd in ["validate", "run"] {
        let (code, text) = as_nobody(cmd);
        assert_eq!(code, 78, "{cmd}: {text}");
        assert!(
            text.contains("outbox: cannot create a file in it")
                && text.contains(
                    "1 entry in it belongs to another user (root: a `sudo sonitor run`?): outbox;"
                )
                && text.contains(&chown_all),
            "{cmd}: {text}"
        );
    }
    chown(&state.join("outbox"));
    // A machine's clip folder root's: a warning that names it, and the machines are watched.
    std::fs::create_dir_all(state.join("clips/pump-1")).unwrap();
    chown(&state.join("clips"));
    let (code, text) = as_nobody("validate");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("clip folder")
            && text.contains("evidence clips will not be written there (the alarms still are)")
            && text.contains("clips/pump-1;")
            && text.contains(&chown_all),
        "{text}"
    );
    chown(&state.join("clips/pump-1"));
    // Written by root with a umask of 027: the saved states and a waiting message unreadable.
    let unreadable = |p: &Path| {
        std::fs::write(p, "{}").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
    };
    for file in ["alarms.json", "outbox/00000000000000000001.json"] {
        unreadable(&state.join(file));
        let (code, text) = as_nobody("validate");
        assert_eq!(code, 78, "{text}");
        assert!(
            text.contains(&format!(
                "cannot read {}: Permission denied",
                state.join(file).display()
            )) && text.contains(&format!(
                "1 entry in it belongs to another user (root: a `sudo sonitor run`?): {file};"
            )) && text.contains(&chown_all),
            "{file}: {text}"
        );
        chown(&state.join(file));
    }
    let (code, text) = as_nobody("validate");
    assert_eq!(code, 0, "{text}");
}

/// `sudo sonitor validate`, as the docs say to run it, reads every file whatever its mode: it said OK of a
/// configuration and a bundle that the service's user (the state directory's owner) may not read, and the service
/// then refused them (review23). It warns of each, naming the path, its mode and the chmod. As root only.
#[test]
fn root_validate_warns_of_files_the_services_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root reads what the service's user cannot");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (b, wav) = common::bundle_and_wav(d.path(), "rec.wav", &common::recording(3.0, 0.0, 0.0));
    let cfg = common::offline_config(d.path(), &wav, &b.dir, "");
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    for entry in walk(d.path()) {
        mode(&entry, if entry.is_dir() { 0o755 } else { 0o644 });
    }
    // Before the service's first start the state directory is root's (or not there): nobody to ask for.
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("the service's user"), "{text}");
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    give_to_nobody(&state);
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("the service's user"), "all readable: {text}");
    mode(&cfg, 0o600);
    mode(&b.dir, 0o700);
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");
    for (path, m, fix) in [(&cfg, "0600", "a+r"), (&b.dir, "0700", "-R a+rX")] {
        assert!(
            text.contains(&format!(
                "{}: the service's user (uid 65534, the owner of state_dir) may not read it, as its mode says ({m}, \
                 owner uid 0)",
                path.display()
            )) && text.contains(&format!("`sudo chmod {fix} {}`", path.display())),
            "{}: {text}",
            path.display()
        );
    }
    // A file in a folder it may read, itself closed to it; and the recording.
    mode(&cfg, 0o644);
    mode(&b.dir, 0o755);
    mode(&b.dir.join("model.onnx"), 0o640);
    mode(&wav, 0o600);
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "{}: the service's user",
            b.dir.join("model.onnx").display()
        )) && text.contains(&format!(
            "device 'mic' {}: the service's user",
            wav.display()
        )) && !text.contains(&format!("{}: the service's user", cfg.display())),
        "{text}"
    );
    // A password file is a secret: given to the service's user, not opened to all (review24).
    let pw = d.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    mode(&pw, 0o600);
    common::edit(&cfg, |t| {
        t.replace(
            "[mqtt]\nenabled = false\n",
            &format!(
                "[mqtt]\nenabled = true\nusername = \"u\"\npassword_file = \"{}\"\n",
                pw.display()
            ),
        )
    });
    let (code, text) = sonitor(&["validate"], &cfg);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!(
            "mqtt.password_file {}: the service's user",
            pw.display()
        )) && text.contains(&format!(
            "`sudo chown 65534 {}` (a secret: not chmod a+r)",
            pw.display()
        )),
        "{text}"
    );
}

/// A copy of the `sonitor` binary in `dir` that `nobody` can run (a checkout under /root is not reachable), for
/// tests run as root that act as another user; `None`, said, where nobody cannot run it.
fn sonitor_for_nobody(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let exe = dir.join("sonitor");
    std::fs::copy(env!("CARGO_BIN_EXE_sonitor"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runs = Command::new(&exe)
        .arg("--version")
        .uid(65534)
        .gid(65534)
        .output();
    if !runs.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: nobody cannot reach {}", exe.display());
        return None;
    }
    Some(exe)
}

/// `exe ARGS --config CONFIG` run as `nobody`: its exit status, and what it wrote (stderr, then stdout).
fn as_nobody(exe: &Path, args: &[&str], config: &Path) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(exe)
        .args(args)
        .arg("--config")
        .arg(config)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// Gives `path` to `nobody` (uid and gid 65534), as the service's user owns its state directory.
fn give_to_nobody(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
}

/// Every file and directory under `dir`, `dir` included.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// A `buffer_frames` the device does not offer (review33: 100 000 000 passed `validate`, then `run` retried the
/// open for ever, its machine NO_AUDIO, as if the device were away): refused, with the range it takes.
#[test]
fn a_buffer_size_the_device_does_not_offer_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let b = common::standard_bundle(d.path());
    let raw = d.path().join("in.raw");
    std::fs::write(&raw, vec![0u8; 3200]).unwrap();
    let conf = d.path().join("asound.conf");
    let pcm = common::file_pcm("testmic", &raw, Path::new("/dev/null"), "test microphone");
    std::fs::write(&conf, pcm).unwrap();
    let device = "[[devices]]\nname = \"mic\"\nsource = \"capture\"\ndevice = \"alsa:testmic\"\n\
                  channels = 1\nsample_rate = 16000\nbuffer_frames = 100000000\n";
    let cfg = common::config(d.path(), device, &b.dir, 1, "");
    common::edit(&cfg, |t| t.replace("[mqtt]\n", "[mqtt]\nenabled = false\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .env("ALSA_CONFIG_PATH", &conf)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert!(
        said.contains("buffer_frames 100000000 is refused by the device (Buffer size 100000000 is not in the supported range")
            && said.contains("leave buffer_frames out"),
        "{said}"
    );
    // One in the range is taken.
    common::edit(&cfg, |t| {
        t.replace("buffer_frames = 100000000", "buffer_frames = 1024")
    });
    let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .env("ALSA_CONFIG_PATH", &conf)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

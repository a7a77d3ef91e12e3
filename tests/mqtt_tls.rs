//! TLS and credentials against a real broker: mosquitto with a test CA, a server certificate for 127.0.0.1, a
//! required client certificate and a password file. The daemon connects with rustls (ring provider), its CA,
//! its client certificate and the username/password given through `SONITOR_MQTT__…` environment overrides; a
//! wrong password is refused with a message that says what to check.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sonitor test CA",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

#[test]
fn tls_with_client_certificate_and_password() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    let pw = pki.join("passwords");
    let out = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["sonitor", "s3cret"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = common::free_port();
    let conf = d.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nuser root\nallow_anonymous false\npassword_file {pw}\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\nrequire_certificate true\n",
            pw = pw.display(),
            p = pki.display()
        ),
    )
    .unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto (TLS) did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (b, wav) = common::bundle_and_wav(d.path(), "normal.wav", &common::pump());
    let dev = common::file_device(&wav, "realtime = true\nat_end = \"loop\"\n");
    let tls = format!(
        "[mqtt.tls]\nenabled = true\nca_file = \"{p}/ca.pem\"\nclient_cert = \"{p}/client.pem\"\nclient_key = \"{p}/client.key\"\n",
        p = pki.display()
    );
    let cfg = common::config(d.path(), &dev, &b.dir, port, &tls);

    let daemon = common::Daemon::start(
        &cfg,
        &[
            ("SONITOR_MQTT__USERNAME", "sonitor"),
            ("SONITOR_MQTT__PASSWORD", "s3cret"),
        ],
    );
    daemon.wait_log("mqtt: connected to 127.0.0.1", Duration::from_secs(20));
    assert_eq!(daemon.sigterm_and_wait(), 0);

    let daemon = common::Daemon::start(
        &cfg,
        &[
            ("SONITOR_MQTT__USERNAME", "sonitor"),
            ("SONITOR_MQTT__PASSWORD", "wrong"),
        ],
    );
    daemon.wait_log("refused the connection", Duration::from_secs(20));
    assert!(daemon
        .log
        .lock()
        .unwrap()
        .contains("check mqtt.username/password"));
    drop(daemon);

    // The broker's own certificate as ca_file (not a CA's): `validate` warns, as every connection would fail with
    // UnknownIssuer; the CA's is not warned about.
    let validate = |cfg: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_sonitor"))
            .args(["validate", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
    };
    assert!(!validate(&cfg).contains("not a CA's"), "{}", validate(&cfg));
    let server_as_ca = d.path().join("server-as-ca.toml");
    std::fs::write(
        &server_as_ca,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("/ca.pem", "/server.pem"),
    )
    .unwrap();
    let shown = validate(&server_as_ca);
    assert!(
        shown.contains("its certificate is not a CA's") && shown.contains("UnknownIssuer"),
        "{shown}"
    );

    // Plain MQTT against the TLS port: the log asks whether the port is the plain one.
    let plain = common::config(d.path(), &dev, &b.dir, port, "");
    let daemon = common::Daemon::start(&plain, &[]);
    daemon.wait_log(
        "is this the broker's plain MQTT port?",
        Duration::from_secs(20),
    );
    drop(daemon);
    // The broker's certificate as ca_file at run time: the hint is about the certificate, not the port.
    let daemon = common::Daemon::start(&server_as_ca, &[]);
    daemon.wait_log(
        "the broker's certificate is not trusted",
        Duration::from_secs(20),
    );
    drop(daemon);
    let _ = broker.kill();
    let _ = broker.wait();
}

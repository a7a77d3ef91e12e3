//! A device upgraded in place (the Debian package replaces the binary; `/var/lib/sonitor` stays): today's daemon
//! starts on the state directory an older one left, and carries on where it stopped. The fixture
//! (`tests/fixtures/upgrade-623c8da/`, made by its `make.sh` with `sonitor` of commit 623c8da, 2026-12-03) holds:
//!
//! - pump-2's threshold set to 0.3 and pump-3 disabled, over MQTT, in `alarms.json`;
//! - the alarms of pump-1 and pump-2 (the fault scores above 0.3 too), raised during a broker outage and on when
//!   that daemon stopped: their `ON` and `start` events in the outbox, never acknowledged.
//!
//! Nothing of it may be lost or refused: the unsent alarm goes out with its event id, the alarm resumes and ends
//! on normal audio under the same event, and the commands stay in force.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{on, Broker, Daemon, Recorder};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn the_state_an_older_daemon_left_is_carried_on() {
    let d = tempfile::tempdir().unwrap();
    let fixture = common::workspace().join("tests/fixtures/upgrade-623c8da/state");
    let state = d.path().join("state");
    copy_dir(&fixture, &state);
    let waiting = std::fs::read_dir(state.join("outbox")).unwrap().count();
    assert!(
        waiting >= 2,
        "the fixture's outbox holds pump-1's ON and start"
    );

    // The demo recording's first 15 s: the pump running normally.
    let demo = common::workspace().join("models/default/demo.wav");
    let (_, audio) =
        sonitor_core::audio::read_wav(&demo, sonitor_core::audio::ChannelSelect::Mix).unwrap();
    let normal = d.path().join("normal.wav");
    common::write_wav(&normal, &audio[..16_000 * 15]);

    let broker = Broker::start(&d.path().join("broker"));
    let rec = Recorder::start(broker.port, "recorder-upgrade");
    let mut cfg = format!(
        "node_id = \"upgrade\"\nstate_dir = \"{}\"\nlog_level = \"info\"\n\n[[devices]]\nname = \"rec\"\n\
         source = \"file\"\npath = \"{}\"\nrealtime = false\nat_end = \"exit\"\n\n[mqtt]\nenabled = true\n\
         host = \"127.0.0.1\"\nport = {}\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n\n[metrics]\n\
         enabled = false\n",
        state.display(),
        normal.display(),
        broker.port
    );
    for m in ["pump-1", "pump-2", "pump-3"] {
        cfg.push_str(&format!(
            "\n[[machines]]\nname = \"{m}\"\ndevice = \"rec\"\nchannel = 0\nbundle = \"{}\"\n\
             section = \"pump/section_00\"\n",
            common::workspace().join("models/default").display()
        ));
    }
    let path = d.path().join("sonitor.toml");
    std::fs::write(&path, cfg).unwrap();

    let mut daemon = Daemon::start(&path, &[]);
    let (code, log) = daemon.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    // Read as it was written: nothing set aside as unreadable, no entry dropped.
    assert!(
        !log.contains("unreadable") && !log.contains(".bad"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(&state).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".bad")),
        "a state file was set aside"
    );

    let ended = |m: &[common::Msg], machine: &str| {
        on(m, &format!("sonitor/upgrade/{machine}/events"))
            .iter()
            .any(|e| e.contains("\"type\":\"end\""))
    };
    let msgs = rec.wait_for("both ends", Duration::from_secs(20), |m| {
        ended(m, "pump-1") && ended(m, "pump-2")
    });
    for (machine, id) in [
        ("pump-1", "upgrade-pump-1-1796617183489-1"),
        ("pump-2", "upgrade-pump-2-1796617183502-1"),
    ] {
        // The start the old daemon could not deliver, then the end of that same event, on normal audio.
        let events: Vec<serde_json::Value> =
            on(&msgs, &format!("sonitor/upgrade/{machine}/events"))
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
        let start = events.iter().find(|e| e["type"] == "start").expect("start");
        let end = events.iter().find(|e| e["type"] == "end").unwrap();
        assert_eq!(start["event_id"], id, "{events:?}");
        assert_eq!(end["event_id"], id, "{events:?}");
        assert_eq!(end["reason"], "normal", "{end}");
        assert_eq!(end["seq"], 2, "{end}");
        assert!(
            start["started_at"].as_str().unwrap() < end["ended_at"].as_str().unwrap(),
            "{events:?}"
        );
        let alarm = on(&msgs, &format!("sonitor/upgrade/{machine}/alarm"));
        assert_eq!(
            alarm.first().map(String::as_str),
            Some("ON"),
            "the unsent ON comes first: {alarm:?}"
        );
        assert_eq!(alarm.last().map(String::as_str), Some("OFF"), "{alarm:?}");
    }
    // The commands the old daemon was given stay in force.
    assert_eq!(
        on(&msgs, "sonitor/upgrade/pump-2/threshold")
            .last()
            .map(String::as_str),
        Some("0.3")
    );
    assert_eq!(
        on(&msgs, "sonitor/upgrade/pump-3/enabled")
            .last()
            .map(String::as_str),
        Some("OFF")
    );
    assert!(
        on(&msgs, "sonitor/upgrade/pump-3/events").is_empty(),
        "a disabled machine raises no alarm"
    );
    drop(daemon);
}

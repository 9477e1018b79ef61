//! Custom voices survive what happens outside the process (issue 23, items 7 and 10): a
//! registry file the disk cannot take, a daemon killed (SIGKILL) while upstream creates a voice,
//! temporary files an interrupted write left. Against the DashScope double's custom-voice
//! endpoint; the kill goes to the real binary.

use std::time::Duration;

use herald::pb::{self, create_voice_request::Source, custom_voice::Status as VStatus};
use tonic::Code;

use crate::support::{dashscope::*, *};

fn toml() -> String {
    layered(&[FAST_UPSTREAM, ENGINES_ONLY])
}

async fn start_daemon(double: &DashScopeDouble, state: &std::path::Path) -> TestDaemon {
    let state = state.display().to_string();
    spawn_daemon_against(double, &toml(), &[("STATE_DIRECTORY", &state)]).await
}

fn design_req(name: &str) -> pb::CreateVoiceRequest {
    pb::CreateVoiceRequest {
        target_model: "qwen3-tts-vd-2026-01-26".to_owned(),
        name: name.to_owned(),
        source: Some(Source::Design(pb::DesignSource {
            description: "warm, calm, middle-aged female, slightly slow".to_owned(),
            preview_text: "Welcome to the museum.".to_owned(),
        })),
        language: "en".to_owned(),
        wait: false,
    }
}

fn creates(double: &DashScopeDouble) -> usize {
    double
        .customization_requests()
        .iter()
        .filter(|r| r.body["input"]["action"] == "create")
        .count()
}

/// "Disk full": the registry file's place is taken by a directory after the start, so every
/// rewrite of the registry fails (the rename over it), as it does on a full or read-only file
/// system. The create still answers with the voice (no UNAVAILABLE that a retry would turn
/// into a duplicate), with a warning; the voice can be fetched, and after a restart (the disk
/// mended, the record lost) it is adopted again, fetched and deleted.
#[tokio::test]
async fn a_create_the_registry_cannot_record_answers_with_the_voice_and_a_warning() {
    let double = DashScopeDouble::start(API_KEY).await;
    let state = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&double, state.path()).await;
    let blocker = state.path().join("voices.json");
    std::fs::create_dir(&blocker).unwrap();
    let mut client = daemon.client().await;
    let voice = client
        .create_voice(design_req("fulldisk"))
        .await
        .expect("the voice exists upstream: answered, not UNAVAILABLE")
        .into_inner();
    assert!(
        voice.warning.contains("could not write its voice registry"),
        "{}",
        voice.warning
    );
    assert!(!voice.preview_audio.is_empty(), "the preview is there");
    assert_eq!(double.custom_voices().len(), 1);
    assert_eq!(creates(&double), 1);
    let got = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .expect("fetched from memory")
        .into_inner();
    assert_eq!(got.status(), VStatus::Ready);
    let leftovers: Vec<_> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, ["voices.json"], "no temporary file left behind");
    daemon.stop().await.unwrap();

    // The disk is mended; the record never reached it.
    std::fs::remove_dir(&blocker).unwrap();
    let daemon = start_daemon(&double, state.path()).await;
    let mut client = daemon.client().await;
    let got = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .expect("adopted from upstream's listing")
        .into_inner();
    assert_eq!(got.target_model, "qwen3-tts-vd-2026-01-26");
    assert_eq!(got.kind, "design");
    assert_eq!(got.requested_name, "fulldisk");
    assert!(got.warning.contains("adopted"), "{}", got.warning);
    let deleted = client
        .delete_voice(pb::DeleteVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .expect("deleted")
        .into_inner();
    assert!(!deleted.already_gone_upstream);
    assert!(double.custom_voices().is_empty(), "deleted upstream");
    assert_eq!(creates(&double), 1, "never created twice");
    daemon.stop().await.unwrap();
}

/// SIGKILL while upstream creates a voice (the double holds its answer back after storing the
/// voice): after a restart, the voice ListVoices shows can be fetched and deleted.
#[tokio::test]
async fn a_create_killed_mid_request_leaves_a_voice_that_can_be_fetched_and_deleted() {
    let double = DashScopeDouble::start(API_KEY).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().display().to_string();
    let serve = || {
        Serve::new(&toml())
            .double(&double)
            .env("STATE_DIRECTORY", &state_dir)
            .start()
    };
    double.push_fault(
        Fault::once(FaultKind::SlowFirstByte {
            delay: Duration::from_secs(60),
        })
        .for_model("qwen-voice-design"),
    );
    let mut server = serve();
    let mut client = server.client().await;
    let create = tokio::spawn(async move { client.create_voice(design_req("killed")).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while double.custom_voices().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the create never reached upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // The client never got an answer (the connection died with the daemon).
    assert!(create.await.unwrap().is_err());
    let id = double.custom_voices()[0].id.clone();
    drop(server);

    let server = serve();
    let mut client = server.client().await;
    let listed: Vec<_> = client
        .list_voices(pb::ListVoicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .voices
        .into_iter()
        .filter(|v| v.custom)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, id);
    let got = client
        .get_voice(pb::GetVoiceRequest { name: id.clone() })
        .await
        .expect("the voice ListVoices shows can be fetched")
        .into_inner();
    assert_eq!(got.status(), VStatus::Ready);
    assert_eq!(got.requested_name, "killed");
    assert!(got.warning.contains("adopted"), "{}", got.warning);
    client
        .delete_voice(pb::DeleteVoiceRequest { name: id.clone() })
        .await
        .expect("and deleted");
    assert!(double.custom_voices().is_empty(), "deleted upstream");
    let err = client
        .get_voice(pb::GetVoiceRequest { name: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(creates(&double), 1);
}

/// A temporary file of a registry rewrite that a crash interrupted is removed at start, and the
/// registry itself loads (the voice keeps its record: its creation time, no adoption warning).
#[tokio::test]
async fn temporary_files_of_the_registry_are_removed_at_start() {
    let double = DashScopeDouble::start(API_KEY).await;
    let state = tempfile::tempdir().unwrap();
    let daemon = start_daemon(&double, state.path()).await;
    let mut client = daemon.client().await;
    let voice = client
        .create_voice(design_req("kept"))
        .await
        .unwrap()
        .into_inner();
    daemon.stop().await.unwrap();
    let leftover = state.path().join(".voices.json.tmp-4242-17");
    std::fs::write(&leftover, b"{\"version\":1,\"voices\":[").unwrap();

    let daemon = start_daemon(&double, state.path()).await;
    assert!(!leftover.exists(), "the temporary file is gone");
    let mut client = daemon.client().await;
    let got = client
        .get_voice(pb::GetVoiceRequest {
            name: voice.name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.created_at_ms, voice.created_at_ms);
    assert_eq!(got.warning, "");
    assert_eq!(got.description, voice.description);
    daemon.stop().await.unwrap();
}

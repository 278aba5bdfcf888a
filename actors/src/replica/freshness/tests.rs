use super::*;

const RULES: Rules = Rules {
    max_staleness: 5.0,
    heartbeat: true,
};

fn streaming(heartbeat_age: f64, unreplayed: u64, replay_age: f64) -> Observation {
    Observation {
        in_recovery: true,
        replay_age: Some(replay_age),
        replay_paused: unreplayed > 0,
        unreplayed_bytes: Some(unreplayed),
        receiver: Some(Receiver {
            status: Some("streaming".into()),
            last_msg_age: Some(0.1),
            latest_end_age: Some(0.1),
            timeline: Some(1),
        }),
        heartbeat_age: Some(heartbeat_age),
    }
}

/// The kinds of the events queued so far, removed from the sink.
fn kinds(events: &EventSink) -> Vec<String> {
    let queued = events.peek(100);
    events.done(queued.len());
    queued
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).expect("event JSON");
            v["type"].as_str().expect("type").to_owned()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn only_transitions_are_announced() {
    let f = Freshness::default();
    let events = EventSink::new(100);
    f.configure(RULES);
    f.record(streaming(1.0, 0, 1.0), RULES, &events);
    assert_eq!(
        kinds(&events),
        Vec::<String>::new(),
        "fresh at first: quiet"
    );
    f.record(streaming(9.0, 4096, 9.0), RULES, &events);
    f.record(streaming(10.0, 8192, 10.0), RULES, &events);
    assert_eq!(kinds(&events), ["replica.stale"]);
    let view = f.view().expect("view");
    assert_eq!(view.reason, Some(Reason::ReplayStalled));
    assert!(f.is_stale());
    // Another reason while stale is no new event.
    f.record(streaming(10.0, 0, 10.0), RULES, &events);
    assert_eq!(f.view().expect("view").reason, Some(Reason::NoHeartbeat));
    assert_eq!(kinds(&events), Vec::<String>::new());
    f.record(streaming(0.5, 0, 0.5), RULES, &events);
    assert_eq!(kinds(&events), ["replica.fresh"]);
    assert!(!f.is_stale());
}

#[tokio::test(start_paused = true)]
async fn a_first_reading_that_is_stale_is_announced() {
    let f = Freshness::default();
    let events = EventSink::new(100);
    f.configure(RULES);
    let mut o = streaming(60.0, 0, 60.0);
    o.receiver = None;
    f.record(o, RULES, &events);
    assert_eq!(kinds(&events), ["replica.stale"]);
    assert_eq!(f.view().expect("view").reason, Some(Reason::ReceiverDown));
}

#[tokio::test(start_paused = true)]
async fn a_reading_grows_old_and_is_then_unobserved() {
    let f = Freshness::default();
    let events = EventSink::new(100);
    assert_eq!(f.view(), None, "no view before the tracker starts");
    f.configure(RULES);
    assert_eq!(f.view().expect("view").verdict, "fresh", "just started");
    f.record(streaming(1.0, 0, 1.0), RULES, &events);
    tokio::time::advance(Duration::from_secs(3)).await;
    let view = f.view().expect("view");
    assert_eq!(view.verdict, "fresh");
    assert_eq!(view.heartbeat_age_secs, Some(4.0), "aged by the time since");
    tokio::time::advance(Duration::from_millis(2500)).await;
    // 6.5 s since the last commit seen, 5.5 s since the reading: no news is not fresh.
    let view = f.view().expect("view");
    assert_eq!(
        (view.verdict.as_str(), view.reason),
        ("stale", Some(Reason::Unobserved))
    );
    assert_eq!(view.observed_secs_ago, Some(5.5));
}

#[tokio::test(start_paused = true)]
async fn a_tracker_that_never_read_is_unobserved_after_the_limit() {
    let f = Freshness::default();
    f.configure(RULES);
    tokio::time::advance(Duration::from_secs(6)).await;
    let view = f.view().expect("view");
    assert_eq!(view.reason, Some(Reason::Unobserved));
    assert_eq!(view.source, None);
}

#[tokio::test(start_paused = true)]
async fn the_main_site_s_primary_stays_fresh_whatever_its_age() {
    let f = Freshness::default();
    let events = EventSink::new(100);
    f.configure(RULES);
    let primary = Observation {
        in_recovery: false,
        heartbeat_age: Some(2.0),
        ..Observation::default()
    };
    f.record(primary, RULES, &events);
    tokio::time::advance(Duration::from_secs(600)).await;
    let view = f.view().expect("view");
    assert_eq!(
        (view.verdict.as_str(), view.source.as_deref()),
        ("fresh", Some("primary"))
    );
    assert!(kinds(&events).is_empty());
}

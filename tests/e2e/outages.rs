//! Broker connections lost or closed while work is under way: nothing is lost, nothing is sent twice.

use resetmail_shared::{
    config::{BrokerConfig, QueueType},
    db::users::UserStatus,
    topology::{DeclareError, Topology},
};
use resetmail_testkit::{
    PATIENCE,
    broker::{self, TestBroker, close_connections_named},
    db::TestDb,
    eventually,
    process::http_get,
    proxy::TcpProxy,
    smtp_sink::SmtpSink,
};
use uuid::Uuid;

use crate::harness::{
    TestApi, TestWorker, job_for, per_recipient, publish, sent_rows, worker_config,
};

const OK: &str = r#"{"code":0,"msg":""}"#;

#[tokio::test]
async fn a_worker_that_loses_its_connection_with_jobs_in_flight_loses_none_and_sends_none_twice() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let proxy = TcpProxy::start(broker::server_addr()).await;
    let first = TestWorker::start(worker_config(
        &db.config,
        &broker.config_via(proxy.port()),
        &sink,
        &["--concurrency", "10"],
    ));

    let total = 30;
    for n in 0..total {
        let email = format!("user{n}@example.com");
        db.add_user(&email, None, None, UserStatus::Active).await;
        publish(&broker, &job_for(&email)).await;
    }
    // Jobs are flowing through the first worker; now its connection dies with deliveries unacked.
    sink.wait_for(1, PATIENCE).await;
    proxy.cut();
    first.stop().await;
    let second = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));

    sent_rows(&db, total).await;
    sink.wait_for(total as usize, PATIENCE).await;
    let counts = per_recipient(&sink);
    let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(counts.len(), total as usize);
    broker
        .wait_for_count(&broker.topology.work_queue(), 0, PATIENCE)
        .await;
    second.stop().await;
}

#[tokio::test]
async fn a_worker_given_several_nodes_consumes_through_another_when_its_node_dies() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    // Two proxies in front of the one broker stand for two nodes of a cluster.
    let nodes = [
        TcpProxy::start(broker::server_addr()).await,
        TcpProxy::start(broker::server_addr()).await,
    ];
    let config = broker.config_via_nodes(&[nodes[0].port(), nodes[1].port()]);
    let worker = TestWorker::start(worker_config(&db.config, &config, &sink, &[]));
    db.add_user("first@example.com", None, None, UserStatus::Active)
        .await;
    publish(&broker, &job_for("first@example.com")).await;
    sink.wait_for(1, PATIENCE).await;
    let used = nodes
        .iter()
        .position(|node| node.live_connections() > 0)
        .unwrap_or_else(|| panic!("the worker holds no connection through either node"));

    nodes[used].cut();
    let other = &nodes[1 - used];
    other.wait_for_live_connections(1, PATIENCE).await;
    db.add_user("second@example.com", None, None, UserStatus::Active)
        .await;
    publish(&broker, &job_for("second@example.com")).await;
    sink.wait_for(2, PATIENCE).await;
    assert_eq!(per_recipient(&sink).len(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_running_workers_readiness_follows_its_broker_connection() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let proxy = TcpProxy::start(broker::server_addr()).await;
    let worker = TestWorker::start(worker_config(
        &db.config,
        &broker.config_via(proxy.port()),
        &sink,
        &[],
    ));
    let readiness = |want: u16| {
        let addr = worker.addr.clone();
        async move {
            eventually(&format!("/readyz to answer {want}"), PATIENCE, || async {
                let (status, body) = http_get(&addr, "/readyz", PATIENCE).await;
                (status == want).then_some(body)
            })
            .await
        }
    };
    readiness(200).await;

    proxy.cut();
    let down = readiness(503).await;
    assert!(down.contains("\"consuming\":false"), "{down}");
    proxy.restore();
    readiness(200).await;
    worker.stop().await;
}

#[tokio::test]
async fn requests_keep_their_promise_while_the_broker_closes_every_connection() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let api = TestApi::start(&db, &broker.config).await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));

    // The worker is consuming once the first email arrives.
    db.add_user("first@example.com", None, None, UserStatus::Active)
        .await;
    assert_eq!(
        api.post_reset(r#"{"email":"first@example.com"}"#)
            .await
            .text,
        OK
    );
    sink.wait_for(1, PATIENCE).await;

    let prefix = broker.config.queue_prefix.clone();
    let closer = tokio::spawn(async move { close_connections_named(&prefix).await });
    let mut accepted = vec!["first@example.com".to_owned()];
    let mut refused = 0;
    let mut after_close = 0;
    for n in 0.. {
        let email = format!("user{n}@example.com");
        db.add_user(&email, None, None, UserStatus::Active).await;
        let answer = api.post_reset(&format!(r#"{{"email":"{email}"}}"#)).await;
        if answer.text == OK {
            accepted.push(email);
        } else {
            assert_eq!(
                (answer.status, answer.json["code"].as_i64()),
                (503, Some(40028)),
                "{}",
                answer.text
            );
            refused += 1;
        }
        if closer.is_finished() {
            after_close += 1;
            if after_close == 20 {
                break;
            }
        }
    }
    let closed = closer.await.unwrap();
    assert!(
        closed >= 2,
        "the broker closed {closed} connections; expected the api's and the worker's"
    );

    // Requests answered 503 meanwhile must be answered 0 again once the api has reconnected.
    let late = eventually("the api to accept requests again", PATIENCE, || async {
        let email = format!("late-{}@example.com", Uuid::new_v4().simple());
        db.add_user(&email, None, None, UserStatus::Active).await;
        let answer = api.post_reset(&format!(r#"{{"email":"{email}"}}"#)).await;
        (answer.text == OK).then_some(email)
    })
    .await;
    accepted.push(late);

    // Every request answered code 0 ends in exactly one email. (A request answered 503 may still
    // have reached the queue before the connection closed: it then gets its email too.)
    let counts = eventually("an email for every accepted request", PATIENCE, || async {
        let counts = per_recipient(&sink);
        accepted
            .iter()
            .all(|email| counts.contains_key(email))
            .then_some(counts)
    })
    .await;
    for email in &accepted {
        assert_eq!(
            counts.get(email),
            Some(&1),
            "{email} (after {refused} refusals)"
        );
    }
    let twice: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_pauses_while_the_database_is_unreachable_and_resumes_by_itself() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let proxy = TcpProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], 5432))).await;
    let mut config = worker_config(
        &db.config,
        &broker.config,
        &sink,
        &["--pause-min", "100ms", "--pause-max", "500ms"],
    );
    config.database.url = db
        .config
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    assert_ne!(
        config.database.url, db.config.url,
        "the worker must reach the database through the proxy"
    );
    let worker = TestWorker::start(config);
    for email in ["before@example.com", "during@example.com"] {
        db.add_user(email, None, None, UserStatus::Active).await;
    }
    publish(&broker, &job_for("before@example.com")).await;
    sink.wait_for(1, PATIENCE).await;
    sent_rows(&db, 1).await;

    proxy.cut();
    publish(&broker, &job_for("during@example.com")).await;
    // The job cannot be handled: the worker stops consuming, and the job waits in the work queue,
    // neither sent nor dead-lettered.
    let work_queue = broker.topology.work_queue();
    eventually("the worker to pause its consumer", PATIENCE, || async {
        (broker.consumers(&work_queue).await == 0).then_some(())
    })
    .await;
    broker.wait_for_count(&work_queue, 1, PATIENCE).await;
    assert_eq!(broker.count(&broker.topology.dead_letter_queue()).await, 0);
    assert_eq!(sink.received().len(), 1);

    proxy.restore();
    sink.wait_for(2, PATIENCE).await;
    sent_rows(&db, 2).await;
    assert_eq!(per_recipient(&sink).get("during@example.com"), Some(&1));
    assert_eq!(broker.count(&broker.topology.dead_letter_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_stopping_worker_finishes_what_it_took_and_leaves_the_rest_queued() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let first = TestWorker::start(worker_config(
        &db.config,
        &broker.config,
        &sink,
        &["--concurrency", "4"],
    ));
    let total = 40;
    for n in 0..total {
        let email = format!("user{n}@example.com");
        db.add_user(&email, None, None, UserStatus::Active).await;
        publish(&broker, &job_for(&email)).await;
    }
    sink.wait_for(1, PATIENCE).await;
    first.stop().await;

    // Stopped: whatever it took was sent and acked; the rest waits in the queue, nothing in between.
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE outcome = 'sent'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE outcome <> 'sent'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "a job was left half done");
    assert!(
        sent < total,
        "every job was done before the stop: the test proves nothing"
    );
    assert_eq!(sink.received().len() as i64, sent);
    broker
        .wait_for_count(
            &broker.topology.work_queue(),
            (total - sent) as u32,
            PATIENCE,
        )
        .await;

    let second = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));
    sent_rows(&db, total).await;
    let counts = per_recipient(&sink);
    assert_eq!(counts.len(), total as usize);
    assert!(counts.values().all(|count| *count == 1), "{counts:?}");
    second.stop().await;
}

#[tokio::test]
async fn with_quorum_queues_every_queue_is_one_and_jobs_go_through_retries_and_dead_letters() {
    let db = TestDb::new().await;
    let broker = TestBroker::quorum().await;
    let queues = broker.declared_queues();
    // Retry steps of the same delay share one queue.
    let names: std::collections::BTreeSet<String> = broker.topology.queues().into_iter().collect();
    assert_eq!(queues.len(), names.len(), "{queues:#?}");
    for queue in &queues {
        assert!(queue.contains("\tquorum\t"), "not a quorum queue: {queue}");
    }
    let dead_letters_from = |name: &str| {
        let line = queues
            .iter()
            .find(|line| line.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} is not declared: {queues:#?}"));
        assert!(
            line.contains("at-least-once") && line.contains("reject-publish"),
            "{name} does not dead-letter at least once: {line}"
        );
    };
    dead_letters_from(&broker.topology.work_queue());
    for step in 0..broker.topology.retry_steps() {
        let (name, _) = broker
            .topology
            .retry_queue(step)
            .unwrap_or_else(|| panic!("no retry step {step}"));
        dead_letters_from(&name);
    }

    let sink = SmtpSink::start().await;
    let api = TestApi::start(&db, &broker.config).await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    db.add_user("gone@example.com", None, None, UserStatus::Active)
        .await;
    // Two refusals: the job goes through two quorum retry queues and back to work.
    sink.fail_data(451, "4.3.0 try again later", 2);
    assert_eq!(
        api.post_reset(r#"{"email":"jane@example.com"}"#).await.text,
        OK
    );
    sink.wait_for(1, PATIENCE).await;
    sent_rows(&db, 1).await;
    assert_eq!(sink.attempts(), 3);

    // A permanent refusal: the job lands in the quorum dead-letter queue.
    sink.reject_recipient("gone@example.com", 550, "5.1.1 no such mailbox");
    assert_eq!(
        api.post_reset(r#"{"email":"gone@example.com"}"#).await.text,
        OK
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 1, PATIENCE)
        .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_deployment_whose_queues_are_classic_is_told_how_to_move_to_quorum() {
    let classic = TestBroker::new().await;
    let quorum = Topology::new(&BrokerConfig {
        queue_type: QueueType::Quorum,
        ..classic.config.clone()
    });
    let error = quorum
        .declare(&classic.channel)
        .await
        .expect_err("a quorum declaration of classic queues was accepted");
    assert!(
        matches!(error, DeclareError::Inequivalent { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&classic.topology.dead_letter_queue())
            && message.contains("docs/SCALING.md"),
        "{message}"
    );
}

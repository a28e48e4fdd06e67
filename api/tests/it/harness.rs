//! An api served on a real TCP port, publishing to a test prefix on the real broker.

use std::{sync::Arc, time::Duration};

use clap::Parser as _;
use resetmail_api::{AppState, config::ApiConfig, publisher::Publisher};
use resetmail_shared::config::BrokerConfig;
use resetmail_testkit::{PATIENCE, broker::TestBroker, db::TestDb, eventually};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,
}

/// The api's configuration as an operator would give it, with the test's database and broker.
pub fn api_config(db: &TestDb, broker: &BrokerConfig) -> ApiConfig {
    let mut config = Cli::try_parse_from(["resetmail-api", "--publish-timeout", "2s"])
        .unwrap_or_else(|error| panic!("{error}"))
        .config;
    config.database = db.config.clone();
    config.broker = broker.clone();
    config
}

/// A running api.
pub struct TestApi {
    pub base: String,
    pub client: reqwest::Client,
    pub publisher: Publisher,
    shutdown: CancellationToken,
}

impl TestApi {
    /// Serves the api and waits until its publisher is connected.
    pub async fn start(db: &TestDb, broker: &BrokerConfig) -> TestApi {
        let api = Self::start_unready(db, broker).await;
        eventually("the api's broker connection", PATIENCE, || async {
            api.publisher.is_connected().then_some(())
        })
        .await;
        api
    }

    /// Serves the api without waiting for the broker.
    pub async fn start_unready(db: &TestDb, broker: &BrokerConfig) -> TestApi {
        let config = api_config(db, broker);
        let shutdown = CancellationToken::new();
        let publisher = Publisher::start(&config.broker, config.publish_timeout, shutdown.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let base = format!(
            "http://{}",
            listener
                .local_addr()
                .unwrap_or_else(|error| panic!("{error}"))
        );
        let state = AppState {
            config: Arc::new(config),
            pool: db.pool.clone(),
            publisher: publisher.clone(),
        };
        tokio::spawn(resetmail_api::serve(listener, state, shutdown.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|error| panic!("{error}"));
        TestApi {
            base,
            client,
            publisher,
            shutdown,
        }
    }

    /// POSTs a JSON body to the reset endpoint.
    pub async fn post_reset(&self, body: &str) -> Answer {
        self.send(
            self.client
                .post(format!("{}/api/v4/user/reset", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    /// Sends any request and reads the answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("no answer: {error}"));
        let status = response.status().as_u16();
        let correlation_header = response
            .headers()
            .get("x-cr-correlation-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
        Answer {
            status,
            text,
            json,
            correlation_header,
        }
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub text: String,
    pub json: serde_json::Value,
    pub correlation_header: Option<String>,
}

/// A fresh database and broker prefix with an api on them.
pub async fn setup() -> (TestDb, TestBroker, TestApi) {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start(&db, &broker.config).await;
    (db, broker, api)
}

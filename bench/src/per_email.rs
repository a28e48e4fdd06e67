//! The report's per-email table: what each worker run cost PostgreSQL, the broker and the CPU per
//! email, and what the api cost per request (`footprint.rs` measures it), printed and as JSON.

use serde_json::{Value, json};

use crate::{
    footprint::{ApiFootprint, CLAIM_STATEMENTS, RECORD_STATEMENTS, RunFootprint},
    report::Report,
    worker::WorkerRun,
};

/// The worker runs of the table, by name.
fn runs(report: &Report) -> [(&'static str, &WorkerRun); 3] {
    [
        ("defaults", &report.default_run),
        ("relay 0 ms", &report.relay_fast),
        ("relay 200 ms", &report.relay_slow),
    ]
}

pub fn print(report: &Report) {
    println!(
        "per email, measured from before each worker started to after it stopped (WAL: the whole \
         server's; transactions and rows: the bench's database; the rest: the worker's /metrics)"
    );
    println!(
        "{:<12} {:>6} {:>9} {:>8} {:>6} {:>6} {:>5} {:>5} {:>5} {:>7} {:>7} {:>6} {:>9} {:>6} \
         {:>5} {:>5} {:>5}  CPU ms: {:>9} {:>6} {:>6}",
        "run",
        "emails",
        "WAL B",
        "WAL rec",
        "FPI",
        "xacts",
        "ins",
        "upd",
        "del",
        "claimtx",
        "records",
        "stmts",
        "jobs/batch",
        "deliv",
        "acks",
        "ackfr",
        "pub",
        "resetmail",
        "PG",
        "MQ"
    );
    for (name, run) in runs(report) {
        let cpu = &run.cpu;
        let Some(f) = &run.footprint else {
            println!("{name:<12} (the worker's /metrics could not be read)");
            continue;
        };
        let (pg, w, e) = (f.pg.per(f.emails), &f.worker, f.emails.max(1.0));
        println!(
            "{name:<12} {:>6.0} {:>9.0} {:>8.2} {:>6.3} {:>6.3} {:>5.2} {:>5.2} {:>5.2} {:>7.3} \
             {:>7.3} {:>6.3} {:>9.1} {:>6.3} {:>5.3} {:>5.3} {:>5.3}    {:>9.3} {:>6.3} {:>6.3}",
            f.emails,
            pg.wal_bytes,
            pg.wal_records,
            pg.wal_fpi,
            pg.xacts,
            pg.inserted,
            pg.updated,
            pg.deleted,
            w.claim_transactions / e,
            w.record_statements / e,
            w.statements() / e,
            w.batch_jobs / w.batches.max(1.0),
            w.deliveries / e,
            w.acks / e,
            w.ack_frames / e,
            w.publishes / e,
            cpu.resetmail,
            cpu.postgres,
            cpu.rabbitmq
        );
    }
    if let Some(api) = &report.api_footprint {
        let requests = api.api.requests.max(1.0);
        let pg = api.pg.per(requests);
        println!(
            "  api, per request ({:.0} answered): {:.3} publishes, each confirmed ({:.0} failed); \
             PostgreSQL {:.4} transactions, {:.1} WAL bytes (the whole server's)",
            api.api.requests,
            api.api.publishes / requests,
            api.api.publish_failures,
            pg.xacts,
            pg.wal_bytes
        );
    }
    for row in &report.api {
        println!(
            "  api, CPU ms per request at {} clients: resetmail-api {:.3}, RabbitMQ {:.3} (the node \
             the bench uses)",
            row.clients, row.api_parts.resetmail, row.api_parts.rabbitmq
        );
    }
    println!(
        "  stmts = {CLAIM_STATEMENTS:.0} per claim transaction (BEGIN, the rows' SELECT … FOR NO KEY \
         UPDATE, the accounts' SELECT … FOR NO KEY UPDATE, the counts' SELECT, the decided rows' \
         INSERT, COMMIT) \
         + {RECORD_STATEMENTS:.0} per record, counted by the worker \
         (resetmail_worker_db_transactions_total); pg_stat_statements is {}",
        if report.pg_stat_statements {
            "loaded but not read by the bench"
        } else {
            "not loaded (shared_preload_libraries)"
        }
    );
    if let Some(sizes) = &report.table_sizes {
        let table = |[rows, all, heap]: [f64; 3]| {
            format!(
                "{rows:.0} rows, {all:.0} bytes per row ({heap:.0} in the heap, the rest indexes)"
            )
        };
        println!(
            "  as the bench left them (before vacuum): deliveries {}; password_reset_tokens {}",
            table(sizes.deliveries),
            table(sizes.tokens)
        );
    }
    for (name, run) in runs(report) {
        if let Some(f) = &run.footprint {
            println!(
                "  check, {name}: PostgreSQL counted {:.0} transactions in the bench's database, \
                 the worker's lanes {:.0} (the rest: the worker's start-up: migrations, accounts, pruning)",
                f.pg.xacts,
                f.worker.claim_transactions + f.worker.record_statements
            );
        }
    }
}

pub fn json(report: &Report) -> Value {
    let mut runs_json = serde_json::Map::new();
    for (name, run) in runs(report) {
        let key = name.replace(' ', "_");
        runs_json.insert(
            key,
            run.footprint
                .as_ref()
                .map_or(Value::Null, |f| run_json(f, run)),
        );
    }
    json!({
        "runs": runs_json,
        "api_per_request": report.api_footprint.as_ref().map(|api| api_json(report, api)),
        "statements_per_claim_transaction": CLAIM_STATEMENTS,
        "statements_per_record": RECORD_STATEMENTS,
        "pg_stat_statements_loaded": report.pg_stat_statements,
        "tables": report.table_sizes.as_ref().map(|sizes| {
            let table = |[rows, all, heap]: [f64; 3]| json!({
                "rows": rows,
                "bytes_per_row": round(all),
                "heap_bytes_per_row": round(heap),
            });
            json!({
                "deliveries": table(sizes.deliveries),
                "password_reset_tokens": table(sizes.tokens),
            })
        }),
    })
}

fn run_json(f: &RunFootprint, run: &WorkerRun) -> Value {
    let (pg, w, e) = (f.pg.per(f.emails), &f.worker, f.emails.max(1.0));
    json!({
        "emails": f.emails,
        "wal_bytes": round(pg.wal_bytes),
        "wal_records": round3(pg.wal_records),
        "wal_fpi": round3(pg.wal_fpi),
        "transactions": round3(pg.xacts),
        "rows_inserted": round3(pg.inserted),
        "rows_updated": round3(pg.updated),
        "rows_deleted": round3(pg.deleted),
        "claim_transactions": round3(w.claim_transactions / e),
        "record_statements": round3(w.record_statements / e),
        "statements": round3(w.statements() / e),
        "jobs_per_batch": round(w.batch_jobs / w.batches.max(1.0)),
        "broker_deliveries": round3(w.deliveries / e),
        "broker_acks": round3(w.acks / e),
        "broker_ack_frames": round3(w.ack_frames / e),
        "broker_worker_publishes": round3(w.publishes / e),
        "cpu_ms": {
            "resetmail": round3(run.cpu.resetmail),
            "postgres": round3(run.cpu.postgres),
            "rabbitmq": round3(run.cpu.rabbitmq),
            "total": round3(run.cpu.service()),
        },
        "totals": {
            "pg_transactions": f.pg.xacts,
            "lane_transactions": w.claim_transactions + w.record_statements,
            "wal_bytes": f.pg.wal_bytes,
        },
    })
}

fn api_json(report: &Report, api: &ApiFootprint) -> Value {
    let requests = api.api.requests.max(1.0);
    let pg = api.pg.per(requests);
    json!({
        "cpu_ms_per_request": report.api.iter().map(|row| json!({
            "clients": row.clients,
            "resetmail_api": round3(row.api_parts.resetmail),
            "rabbitmq": round3(row.api_parts.rabbitmq),
        })).collect::<Vec<_>>(),
        "requests": api.api.requests,
        "broker_publishes": round3(api.api.publishes / requests),
        "publish_failures": api.api.publish_failures,
        "pg_transactions": round3(pg.xacts),
        "wal_bytes": round(pg.wal_bytes),
    })
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

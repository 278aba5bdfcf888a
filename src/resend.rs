//! `ops-db-api resend`: steps through the resend window with `POST /admin/resend` until
//! its end, printing each step and the totals.

use ops_db_actors::resend::run::ResendReport;

#[derive(clap::Args)]
pub struct ResendArgs {
    /// The service's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Where to start: an RFC 3339 time (transactions forwarded at or after it, e.g.
    /// 2026-12-05T14:00:00Z) or a stream id (transactions buffered at or after it, e.g.
    /// 1796479200000-0).
    #[arg(long)]
    since: String,
    /// Count what the primary's ledger lacks; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Window entries per request (1 to 10000).
    #[arg(long, default_value_t = 10_000)]
    step: u64,
}

/// The totals over every step.
#[derive(Debug, Default, serde::Serialize)]
struct Totals {
    dry_run: bool,
    steps: u64,
    scanned: u64,
    in_ledger: u64,
    resent: u64,
    already_queued: u64,
    window_oldest_at: Option<String>,
    window_complete: bool,
}

pub async fn run(args: ResendArgs, token: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let endpoint = format!("{}/admin/resend", args.url.trim_end_matches('/'));
    let mut totals = Totals {
        dry_run: args.dry_run,
        ..Totals::default()
    };
    let mut after: Option<String> = None;
    loop {
        let body = serde_json::json!({
            "since": args.since, "after": after, "limit": args.step, "dry_run": args.dry_run,
        });
        let response = http
            .post(&endpoint)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            anyhow::bail!(
                "{status}: {} (after {} steps; run again with the same --since: what was sent \
                 is in the stream and is not sent twice)",
                body["error"]["message"].as_str().unwrap_or("no message"),
                totals.steps
            );
        }
        let step: ResendReport = response.json().await?;
        totals.steps += 1;
        totals.scanned += step.scanned;
        totals.in_ledger += step.in_ledger;
        totals.resent += step.resent;
        totals.already_queued += step.already_queued;
        if totals.steps == 1 {
            totals.window_oldest_at = step.window_oldest_at.clone();
            totals.window_complete = step.window_complete;
        }
        eprintln!(
            "step {}: scanned {}, in the ledger {}, {} {}, already queued {}",
            totals.steps,
            step.scanned,
            step.in_ledger,
            if args.dry_run {
                "would resend"
            } else {
                "resent"
            },
            step.resent,
            step.already_queued
        );
        match step.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if !totals.window_complete {
        eprintln!(
            "warning: the window does not reach back to {} (its oldest entry: {}): \
             transactions forwarded before that cannot be sent again from this summit",
            args.since,
            totals.window_oldest_at.as_deref().unwrap_or("none")
        );
    }
    println!("{}", serde_json::to_string_pretty(&totals)?);
    Ok(())
}

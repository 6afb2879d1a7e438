//! `conclave bench`: runs the loopback benchmark (`conclave-bench`) and prints its figures.

use conclave_bench::{BenchOptions, run_bench};

use crate::cli::BenchArgs;
use crate::output::{note, outln};

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.requests == 0 {
        anyhow::bail!("--clients and --requests must be at least 1");
    }
    if let Some(url) = &args.store
        && !conclave_core::store::is_postgres_url(url)
    {
        anyhow::bail!("--store {url:?}: expected a postgres://... URL (SQLite always runs)");
    }
    // SQLite always; PostgreSQL too when named, in the same run so the figures compare.
    let mut engines = vec![("sqlite", None)];
    if let Some(url) = &args.store {
        engines.push(("postgres", Some(url.clone())));
    }
    let mut runs = Vec::new();
    for (engine, postgres) in engines {
        let options = BenchOptions {
            clients: args.clients,
            requests_per_client: args.requests,
            postgres,
        };
        let stats = run_bench(options, |step| note!("bench ({engine}): {step}")).await?;
        runs.push((engine, stats));
    }
    if args.json {
        let json: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .map(|(engine, stats)| Ok((engine.to_string(), serde_json::to_value(stats)?)))
            .collect::<anyhow::Result<_>>()?;
        // One engine keeps the list it always printed; several are keyed by engine.
        let value = if runs.len() == 1 {
            json.into_iter()
                .next()
                .map_or(serde_json::Value::Null, |(_, stats)| stats)
        } else {
            serde_json::Value::Object(json)
        };
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(());
    }
    outln!("engine    operation  requests   p50 ms   p99 ms   max ms   req/s")?;
    for (engine, stats) in &runs {
        for s in stats {
            outln!(
                "{:<9} {:<10} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>7.0}",
                engine,
                s.operation,
                s.requests,
                s.p50_ms,
                s.p99_ms,
                s.max_ms,
                s.throughput_per_sec
            )?;
        }
    }
    Ok(())
}

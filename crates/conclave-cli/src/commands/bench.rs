//! `conclave bench`: runs the loopback benchmark (`conclave-bench`) and prints its figures.

use conclave_bench::{BenchOptions, run_bench};

use crate::cli::BenchArgs;
use crate::output::{note, outln};

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.requests == 0 {
        anyhow::bail!("--clients and --requests must be at least 1");
    }
    let options = BenchOptions {
        clients: args.clients,
        requests_per_client: args.requests,
    };
    let stats = run_bench(options, |step| note!("bench: {step}")).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&stats)?)?;
        return Ok(());
    }
    outln!("operation  requests   p50 ms   p99 ms   max ms   req/s")?;
    for s in &stats {
        outln!(
            "{:<10} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>7.0}",
            s.operation,
            s.requests,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.throughput_per_sec
        )?;
    }
    Ok(())
}

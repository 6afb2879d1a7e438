//! `conclave lock`, `unlock` and `locks`: file leases.

use conclave_core::model::{
    Lease, LeaseList, LeaseMode, LeaseRelease, LeaseRequest, ReleasedLeases,
};

use crate::cli::{LockArgs, UnlockArgs};
use crate::context::Context;
use crate::output::{Table, clock, note, or_dash, print_json, until};

pub async fn lock(context: &Context, args: LockArgs) -> anyhow::Result<()> {
    context.require_agent("conclave lock")?;
    let client = context.client()?;
    let request = LeaseRequest {
        paths: args.paths,
        mode: if args.shared {
            LeaseMode::Shared
        } else {
            LeaseMode::Exclusive
        },
        ttl_secs: args.ttl,
        reason: args.reason,
        task: args.task,
    };
    let granted: LeaseList = client.post("/api/leases", &request).await?;
    for lease in &granted.leases {
        note!(
            "conclave: locked {} ({}, fencing token {}, until {}, {})",
            lease.path,
            lease.mode,
            lease.fencing_token,
            clock(lease.expires_at),
            until(lease.expires_at)
        );
    }
    Ok(())
}

pub async fn unlock(context: &Context, args: UnlockArgs) -> anyhow::Result<()> {
    let client = context.client()?;
    let request = LeaseRelease {
        paths: args.paths,
        force: args.force,
    };
    let released: ReleasedLeases = client.post("/api/leases/release", &request).await?;
    if released.released.is_empty() {
        note!("conclave: nothing to release");
    }
    for lease in &released.released {
        note!(
            "conclave: released {} (held by {})",
            lease.path,
            lease.holder
        );
    }
    Ok(())
}

pub async fn list(context: &Context, json: bool) -> anyhow::Result<()> {
    let client = context.client()?;
    let list: LeaseList = client.get("/api/leases", &[]).await?;
    if json {
        print_json(&list)?;
    } else if list.leases.is_empty() {
        note!("no leases");
    } else {
        leases_table(&list.leases).print()?;
    }
    Ok(())
}

pub fn leases_table(leases: &[Lease]) -> Table {
    let mut table = Table::new(&["path", "mode", "holder", "task", "expires", "reason"]);
    for lease in leases {
        table.row(vec![
            lease.path.clone(),
            lease.mode.to_string(),
            lease.holder.clone(),
            or_dash(lease.task),
            until(lease.expires_at),
            or_dash(lease.reason.as_ref()),
        ]);
    }
    table
}

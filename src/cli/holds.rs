//! `dsr holds place|release|list` (the `dsr.v1.Holds` service) and `dsr extend` (ExtendDeadline).
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use super::client::{
    channel, connect, render, status_error, subject, time, Auth, Connection, PageArgs, SubjectArgs,
};
use crate::api::pb::{self, holds_client::HoldsClient};

async fn connect_holds(conn: &Connection) -> anyhow::Result<HoldsClient<InterceptedService<Channel, Auth>>> {
    let (channel, auth) = channel(conn).await?;
    Ok(HoldsClient::with_interceptor(channel, auth))
}

pub async fn place(conn: &Connection, s: &SubjectArgs, reason: &str) -> anyhow::Result<()> {
    let mut client = connect_holds(conn).await?;
    let hold = client
        .place_hold(pb::PlaceHoldRequest { subject: Some(subject(s)), reason: reason.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    header();
    row(&hold);
    Ok(())
}

pub async fn release(conn: &Connection, id: &str, reason: &str) -> anyhow::Result<()> {
    let mut client = connect_holds(conn).await?;
    let hold = client
        .release_hold(pb::ReleaseHoldRequest { id: id.to_owned(), reason: reason.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    header();
    row(&hold);
    Ok(())
}

pub async fn list(
    conn: &Connection,
    tenant: Option<String>,
    active_only: bool,
    page: &PageArgs,
) -> anyhow::Result<()> {
    let mut client = connect_holds(conn).await?;
    let mut req = pb::ListHoldsRequest {
        tenant_id: tenant.unwrap_or_default(),
        active_only,
        page_size: page.limit,
        page_token: page.page_token.clone(),
    };
    header();
    loop {
        let r = client.list_holds(req.clone()).await.map_err(status_error)?.into_inner();
        r.holds.iter().for_each(row);
        if page.all && !r.next_page_token.is_empty() {
            req.page_token = r.next_page_token;
            continue;
        }
        page.footer(&r.next_page_token);
        return Ok(());
    }
}

/// ExtendDeadline: once per request, by what the request's law allows.
pub async fn extend(conn: &Connection, id: &str, reason: &str) -> anyhow::Result<()> {
    let mut client = connect(conn).await?;
    let r = client
        .extend_deadline(pb::ExtendDeadlineRequest { id: id.to_owned(), reason: reason.to_owned() })
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", render(&r));
    Ok(())
}

fn header() {
    println!(
        "{:<45}  {:<12} {:<17} {:<7} {:<20}  {:<20}  BASIS / REQUEST",
        "ID", "TENANT", "KIND", "ACTIVE", "PLACED", "UNTIL/ENDED"
    );
}

/// One hold per line; a litigation hold's reason is not printed (it may name people), the
/// `ListHolds` answer has it for whoever needs it.
fn row(h: &pb::Hold) {
    let kind =
        pb::HoldKind::try_from(h.kind).map_or("?", |k| k.as_str_name().trim_start_matches("HOLD_KIND_"));
    let end = if h.active { time(h.until.as_ref()) } else { time(h.ended_at.as_ref()) };
    let basis = if h.request_id.is_empty() {
        h.basis.clone()
    } else {
        format!("{} ({} {}, {} records)", h.basis, h.request_id, h.store, h.records)
    };
    println!(
        "{:<45}  {:<12} {:<17} {:<7} {:<20}  {:<20}  {}",
        h.id,
        h.tenant_id,
        kind,
        if h.active { "yes" } else { "no" },
        time(h.placed_at.as_ref()),
        end,
        basis
    );
}

//! `dsr adapter check URL`: the remote-adapter conformance suite (`crate::adapter::check`) against
//! a running adapter, as a pass/fail table; non-zero exit when any rule fails.
use std::time::Duration;

use clap::Args;

use crate::adapter::check::{run, table, CheckOptions};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The adapter's URL (http://host:port or https://host:port).
    pub url: String,
    /// Bearer token the adapter requires (also checked: a call without it is UNAUTHENTICATED).
    #[arg(long, env = "DSR_ADAPTER_TOKEN")]
    pub token: Option<String>,
    /// The tenant of the test subject the adapter holds.
    #[arg(long, default_value = crate::adapter::voicemail::CHECK_TENANT)]
    pub tenant: String,
    /// The test subject's phone (E.164).
    #[arg(long, default_value = crate::adapter::voicemail::CHECK_PHONE)]
    pub phone: String,
    /// The test subject's email.
    #[arg(long, default_value = crate::adapter::voicemail::CHECK_EMAIL)]
    pub email: String,
    /// The phone the rectification rule moves the subject to.
    #[arg(long, default_value = crate::adapter::voicemail::CHECK_NEW_PHONE)]
    pub new_phone: String,
    /// The longest any call may take, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let results = run(CheckOptions {
        url: args.url,
        token: args.token,
        tenant: args.tenant,
        phone: args.phone,
        email: Some(args.email),
        new_phone: args.new_phone,
        timeout: Duration::from_millis(args.timeout_ms),
    })
    .await;
    print!("{}", table(&results));
    let failed: Vec<&str> = results.iter().filter(|r| !r.passed).map(|r| r.rule).collect();
    anyhow::ensure!(failed.is_empty(), "the adapter fails the contract: {}", failed.join(", "));
    Ok(())
}

//! `recsync fake-odoo` and `recsync fake-http`: the fake Odoo and the fake HTTP JSON API,
//! until Ctrl-C.

use super::*;

pub(super) async fn fake_odoo(opts: crate::peer::odoo::OdooOptions, partners: usize) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty, None);
    let (database, login) = (opts.database.clone(), opts.login.clone());
    match crate::peer::odoo::FakeOdoo::bind(opts) {
        Ok(fake) => {
            fake.state.seed_partners(partners);
            println!(
                "Fake Odoo listening on {} (database `{database}`, login `{login}`)",
                fake.url()
            );
            serve_until_ctrl_c("the fake Odoo", fake.handle(), fake.run()).await
        }
        Err(e) => {
            eprintln!("error: the fake Odoo cannot listen: {e}");
            ExitCode::from(1)
        }
    }
}

pub(super) async fn fake_http(
    listen: String,
    auth: &str,
    rate_limit: Option<u32>,
    seed: &[String],
) -> ExitCode {
    use crate::peer::http::{FakeAuth, FakeHttp, HttpOptions};
    crate::telemetry::init(config::LogFormat::Pretty, None);
    let auth = match FakeAuth::parse(auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: --auth: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut seeds = Vec::new();
    for s in seed {
        match s.split_once('=').map(|(r, n)| (r, n.parse::<usize>())) {
            Some((r @ ("contacts" | "tickets" | "items"), Ok(n))) => seeds.push((r.to_string(), n)),
            _ => {
                eprintln!("error: --seed `{s}`: write contacts=N, tickets=N or items=N");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let fake = match FakeHttp::bind(HttpOptions {
        listen,
        auth,
        rate_limit,
    }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: the fake HTTP API cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    for (r, n) in &seeds {
        fake.state.seed(r, *n);
    }
    println!("Fake HTTP API listening on {}", fake.url());
    serve_until_ctrl_c("the fake HTTP API", fake.handle(), fake.run()).await
}

/// Runs a fake's server until it stops or Ctrl-C stops it.
pub(super) async fn serve_until_ctrl_c(
    what: &str,
    handle: actix_web::dev::ServerHandle,
    run: impl std::future::Future<Output = std::io::Result<()>>,
) -> ExitCode {
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(true).await;
    });
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {what} stopped: {e}");
            ExitCode::from(1)
        }
    }
}

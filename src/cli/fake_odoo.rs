//! `recsync fake-odoo`: the fake Odoo, until Ctrl-C.

use super::*;

pub(super) async fn fake_odoo(opts: crate::peer::odoo::OdooOptions, partners: usize) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty);
    let (database, login) = (opts.database.clone(), opts.login.clone());
    match crate::peer::odoo::FakeOdoo::bind(opts) {
        Ok(fake) => {
            fake.state.seed_partners(partners);
            println!(
                "Fake Odoo listening on {} (database `{database}`, login `{login}`)",
                fake.url()
            );
            let handle = fake.handle();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                handle.stop(true).await;
            });
            match fake.run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: the fake Odoo stopped: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("error: the fake Odoo cannot listen: {e}");
            ExitCode::from(1)
        }
    }
}

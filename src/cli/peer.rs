//! `recsync peer`: the reference external system.

use super::*;

pub(super) struct PeerArgs {
    pub(super) listen: String,
    pub(super) api_key: Option<String>,
    pub(super) id_field: String,
    pub(super) callback_url: Option<String>,
    pub(super) callback_key: Option<String>,
    pub(super) syncs: Vec<String>,
    pub(super) seed: bool,
    pub(super) synthetic: Vec<String>,
    pub(super) signing_secret: Option<String>,
}

pub(super) async fn peer(a: PeerArgs) -> ExitCode {
    crate::telemetry::init(config::LogFormat::Pretty, None);
    let mut syncs = std::collections::HashMap::new();
    for s in &a.syncs {
        match s.split_once('=') {
            Some((coll, code)) if !coll.is_empty() && !code.is_empty() => {
                syncs.insert(coll.to_string(), code.to_string());
            }
            _ => {
                eprintln!("error: --sync expects COLLECTION=CODE, such as contacts=CON; got `{s}`");
                return ExitCode::from(2);
            }
        }
    }
    let callback = match (a.callback_url, a.callback_key) {
        (Some(url), Some(key)) => Some(crate::peer::Callback { url, key, syncs }),
        (Some(_), None) => {
            eprintln!("error: --callback-url needs --callback-key (or PEER_CALLBACK_KEY)");
            return ExitCode::from(2);
        }
        _ => None,
    };
    let mut synthetic = std::collections::HashMap::new();
    for s in &a.synthetic {
        match s
            .split_once('=')
            .and_then(|(c, n)| Some((c, n.parse::<u64>().ok()?)))
        {
            Some((coll, n)) if !coll.is_empty() => {
                synthetic.insert(coll.to_string(), n);
            }
            _ => {
                eprintln!(
                    "error: --synthetic expects COLLECTION=COUNT, such as contacts=1000000; got `{s}`"
                );
                return ExitCode::from(2);
            }
        }
    }
    if let Some(secret) = &a.signing_secret
        && let Err(e) = crate::domain::auth::Signing::parse(secret)
    {
        eprintln!("error: --signing-secret: {e}");
        return ExitCode::from(2);
    }
    let opts = crate::peer::PeerOptions {
        listen: a.listen.clone(),
        api_key: a.api_key,
        id_field: a.id_field,
        callback,
        synthetic,
        signing_secret: a.signing_secret,
    };
    let peer = match crate::peer::Peer::bind(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the peer cannot listen on {}: {e}", a.listen);
            return ExitCode::FAILURE;
        }
    };
    let state = peer.state.clone();
    let url = peer.url();
    let handle = peer.handle();
    let server = tokio::spawn(peer.run());
    if a.seed {
        for (coll, mut values) in crate::peer::demo_seed() {
            let id = values
                .remove("id")
                .and_then(|v| crate::domain::mapping::id_text(&v));
            state.upsert(coll, id, values).await;
        }
    }
    println!(
        "recsync peer is listening on {url} (admin API under /peer, protocol under /api). Ctrl-C stops."
    );
    let _ = tokio::signal::ctrl_c().await;
    handle.stop(true).await;
    let _ = server.await;
    ExitCode::SUCCESS
}

//! `recsync keys new`: a new API key and the hash to put in `recsync.toml`.

use super::*;

pub(super) fn keys_new(name: &str, scopes: &[String]) -> ExitCode {
    let scopes: Vec<String> = scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect();
    for s in &scopes {
        if Scope::parse(s).is_none() {
            eprintln!(
                "error: unknown scope `{s}`: use read, write, operate, admin, sync:* or sync:<CODE>"
            );
            return ExitCode::from(2);
        }
    }
    if name.trim().is_empty() || name.contains('"') {
        eprintln!("error: --name must be a non-empty name without quotes");
        return ExitCode::from(2);
    }
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    let key = format!(
        "rsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hex::encode(config::settings::hash_key(&key));
    let scope_list = scopes
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    println!("New API key for `{name}` (shown only this once; give it to its holder now):\n");
    println!("    {key}\n");
    println!("Add this entry to recsync.toml; it holds only the key's SHA-256:\n");
    println!("[[api_keys]]\nname = \"{name}\"\nkey_sha256 = \"{hash}\"\nscopes = [{scope_list}]");
    ExitCode::SUCCESS
}

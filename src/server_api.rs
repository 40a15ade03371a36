//! The server API's command-line parts: the gateway's key file and client-membership flags, and
//! `chatfabric api-key`, which makes a key.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use chatfabric_gateway::api_keys::{self, ApiKeys, Scope};
use chatfabric_gateway::membership::ClientMembership;
use chatfabric_gateway::Limits;
use clap::Args;

/// Gateway flags of the server API (`/v1/server/...`, docs/SERVER_API.md).
#[derive(Args, Clone)]
pub(crate) struct ServerApiArgs {
    /// File of server API keys, one `name scopes sha256` line each (`chatfabric api-key` prints
    /// them). Without it the server API answers every request `unauthenticated`.
    #[arg(long, env = "CHATFABRIC_API_KEYS")]
    pub(crate) api_keys: Option<PathBuf>,
    /// What clients may do to membership themselves: `all` (create direct conversations and
    /// groups, add and remove members), `groups` (groups only; direct conversations come from
    /// the server API) or `off` (only the server API changes membership).
    #[arg(long, env = "CHATFABRIC_CLIENT_MEMBERSHIP", default_value = "all")]
    pub(crate) client_membership: ClientMembership,
    /// Server API requests per second per key, sustained (`429 rate_limited` past the burst).
    #[arg(long, env = "CHATFABRIC_SERVER_API_RATE", default_value_t = Limits::default().server_api_rate)]
    pub(crate) server_api_rate: f64,
    /// Server API requests a key may make in a burst.
    #[arg(long, env = "CHATFABRIC_SERVER_API_BURST", default_value_t = Limits::default().server_api_burst)]
    pub(crate) server_api_burst: f64,
    /// Key-file lines added by `chatfabric dev` (its printed development key), never a flag.
    #[arg(skip)]
    pub(crate) dev_key_lines: Option<String>,
}

impl ServerApiArgs {
    /// The keys of `--api-keys` and of `dev`.
    pub(crate) fn keys(&self) -> anyhow::Result<ApiKeys> {
        let mut text = match &self.api_keys {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --api-keys {}", path.display()))?,
            None => String::new(),
        };
        if let Some(lines) = &self.dev_key_lines {
            text.push('\n');
            text.push_str(lines);
        }
        let keys = ApiKeys::parse(&text).context("parsing the server API keys")?;
        tracing::info!(keys = keys.len(), "server API keys loaded");
        Ok(keys)
    }
}

/// `chatfabric api-key`.
#[derive(Args)]
pub(crate) struct ApiKeyArgs {
    /// The key's name (1 to 60 of A-Z a-z 0-9 _ -): in logs, and the application's service id
    /// `svc_<name>` when it creates conversations and adds members.
    #[arg(long)]
    pub(crate) name: String,
    /// Its scopes, comma separated: conversations, messages, users.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "conversations,messages,users"
    )]
    pub(crate) scopes: Vec<String>,
}

/// A new key for `args`: the key (give it to the application) and its key-file line (give it
/// to every gateway).
pub(crate) fn new_key(name: &str, scopes: &[String]) -> anyhow::Result<(String, String)> {
    let scopes = scopes
        .iter()
        .map(|s| {
            Scope::ALL
                .into_iter()
                .find(|scope| scope.as_str() == s)
                .with_context(|| format!("unknown scope {s:?} (conversations, messages, users)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom for the key")?;
    let (key, line) = api_keys::generate(name, &scopes, random);
    // The line must load: refuse a bad name here rather than at the gateway's start.
    ApiKeys::parse(&line).context("the key's name")?;
    Ok((key, line))
}

/// `chatfabric api-key`: prints the key and the line for the key file.
pub(crate) fn print_new_key(args: &ApiKeyArgs) -> anyhow::Result<()> {
    let (key, line) = new_key(&args.name, &args.scopes)?;
    println!("# give this key to the application (shown once; gateways keep only its SHA-256):");
    println!("{key}");
    println!("# add this line to every gateway's --api-keys file:");
    println!("{line}");
    Ok(())
}

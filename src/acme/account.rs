//! The ACME account: the cached one when it belongs to the configured directory, else a
//! new one (its contact the configured e-mail), cached 0600.

use instant_acme::{Account, AccountCredentials, NewAccount};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use super::cache;
use crate::config::AcmeConfig;

/// Files of the account kept in the cache: which directory it belongs to, so a changed
/// `directory_url` makes a new account.
#[derive(Serialize, Deserialize)]
struct CachedAccount {
    directory_url: String,
    credentials: AccountCredentials,
}

/// The account of `config`'s directory: cached, or made now and cached.
pub(super) async fn open(config: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &config.ca_path {
        Some(path) => {
            Account::builder_with_root(path).map_err(|e| format!("ca_path {}: {e}", path.display()))
        }
        None => Account::builder().map_err(|e| format!("HTTPS client: {e}")),
    };
    let path = config.cache_dir.join(cache::ACCOUNT_FILE);
    let cached = cache::read(&path)
        .ok()
        .flatten()
        .and_then(|text| serde_json::from_str::<CachedAccount>(&text).ok())
        .filter(|cached| cached.directory_url == config.directory_url);
    let made = match cached {
        Some(cached) => builder()?
            .from_credentials(cached.credentials)
            .await
            .map_err(|e| format!("cached account: {e}"))?,
        None => {
            let contact: Vec<String> = config.email.iter().map(|e| format!("mailto:{e}")).collect();
            let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
            let new = NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            };
            let (made, credentials) = builder()?
                .create(&new, config.directory_url.clone(), None)
                .await
                .map_err(|e| format!("new account at {}: {e}", config.directory_url))?;
            let cached = CachedAccount {
                directory_url: config.directory_url.clone(),
                credentials,
            };
            match serde_json::to_vec_pretty(&cached) {
                Ok(json) => {
                    if let Err(e) = cache::write_private(&path, &json) {
                        error!(path = %path.display(), error = %e, "cannot cache the ACME account");
                    }
                }
                Err(e) => error!(error = %e, "cannot write the ACME account"),
            }
            info!(directory = %config.directory_url, "ACME account created");
            made
        }
    };
    Ok(made)
}

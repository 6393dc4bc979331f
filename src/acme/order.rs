//! One certificate ordered for one name: the order, the challenge answered (a token for
//! the HTTP-01 responder, or a validation certificate for the TLS listener), the order
//! finalized with a fresh key, the chain fetched. Whatever happens, the challenge's
//! answer is withdrawn at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use crate::config::AcmeChallenge;
use crate::tls::obtained::{validation_key, Obtained};

/// How long the ACME server may take to validate, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(2.0)
    .timeout(Duration::from_secs(90));

/// HTTP-01 tokens being answered: token → key authorization.
pub(super) type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Where a challenge's answer is put for the ACME server to find.
pub(super) struct Answers<'a> {
    pub tokens: &'a Tokens,
    pub obtained: &'a Obtained,
}

/// A certificate chain and its key, both PEM.
pub(super) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Orders a certificate for `name` proven by `challenge`.
pub(super) async fn obtain(
    account: &Account,
    name: &str,
    challenge: AcmeChallenge,
    answers: &Answers<'_>,
) -> Result<Issued, String> {
    let mut answered = Answered {
        answers,
        name,
        tokens: Vec::new(),
    };
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let kind = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("authorization is {other:?}")),
        }
        let mut handle = authorization
            .challenge(kind.clone())
            .ok_or_else(|| format!("the ACME server offers no {} challenge", challenge.as_str()))?;
        let key_authorization = handle.key_authorization();
        match challenge {
            AcmeChallenge::Http01 => {
                answered.token(&handle.token, key_authorization.as_str());
            }
            AcmeChallenge::TlsAlpn01 => {
                let key = validation_key(name, key_authorization.digest().as_ref())?;
                answered.validation(Arc::new(key));
            }
        }
        handle
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let status = order
        .poll_ready(&POLL)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        let state = order.state();
        let why = state
            .authorizations
            .iter()
            .filter_map(|a| a.state.as_ref())
            .flat_map(|state| state.challenges.iter())
            .filter_map(|c| c.error.as_ref())
            .map(|problem| problem.to_string())
            .next()
            .unwrap_or_else(|| format!("order is {status:?}"));
        return Err(format!("validation failed: {why}"));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    drop(answered);
    Ok(Issued { chain_pem, key_pem })
}

/// The answers put up for one order, withdrawn when it is dropped.
struct Answered<'a> {
    answers: &'a Answers<'a>,
    name: &'a str,
    tokens: Vec<String>,
}

impl Answered<'_> {
    fn token(&mut self, token: &str, key_authorization: &str) {
        let mut tokens = self
            .answers
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.insert(token.to_owned(), key_authorization.to_owned());
        self.tokens.push(token.to_owned());
    }

    fn validation(&mut self, key: Arc<rustls::sign::CertifiedKey>) {
        self.answers.obtained.set_validation(self.name, key);
    }
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.answers.obtained.remove_validation(self.name);
        let mut tokens = self
            .answers
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for token in &self.tokens {
            tokens.remove(token);
        }
    }
}

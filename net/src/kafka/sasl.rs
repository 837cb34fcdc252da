//! SASL on a Kafka connection: SaslHandshake picks the mechanism,
//! SaslAuthenticate carries its tokens (KIP-152) to the connection's
//! `Exchange` (`security/sasl/`), against the SCRAM credentials of the
//! metadata (the catalog). Both answer at once (`Reply::Now`), so a
//! success has set the session's principal before the connection's next
//! request is dispatched.
//!
//! As Kafka: a mechanism the listener does not offer gets
//! UNSUPPORTED_SASL_MECHANISM with the list that is offered, and a failed
//! authentication SASL_AUTHENTICATION_FAILED with Kafka's text, after which
//! the connection closes. Neither request is valid on a listener without
//! SASL or once authenticated (ILLEGAL_SASL_STATE), except for a
//! re-authentication (KIP-368): with `connections.max.reauth.ms` a login
//! lasts that long (told to the client as its session lifetime), the
//! client logs in again on the same connection as the same principal, and
//! a connection whose login expired serves nothing else.

use bytes::Bytes;
use kafka_protocol::ResponseError as K;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, Session, decode, respond};
use crate::security::Principal;
use crate::security::sasl::{Exchange, Mechanism, Step, Verifiers, enabled_mechanisms};
use crate::wire::{Reply, Response};

/// Where a connection is in its SASL authentication.
#[derive(Debug, Default)]
pub(crate) enum SaslState {
    /// No handshake yet.
    #[default]
    Start,
    /// A SaslHandshake v0 was answered: the client now sends bare SASL
    /// tokens without Kafka request headers (Kafka before 1.0), which Spate
    /// does not read.
    Legacy,
    /// A mechanism was chosen; SaslAuthenticate tokens go to it.
    Exchanging(Exchange),
    /// Authenticated (or failed, and the connection is closing).
    Over,
}

/// The mechanisms this broker offers (`sasl.enabled.mechanisms`, in its
/// order). A name Spate does not serve is left out, with a warning (the
/// config's validation should have refused it at start).
fn enabled(ctx: &Ctx) -> Vec<Mechanism> {
    let list = &ctx.shard.shared.config.sasl_enabled_mechanisms;
    enabled_mechanisms(list).unwrap_or_else(|err| {
        tracing::warn!("{err}: offering the others");
        list.split(',').filter_map(|name| Mechanism::parse(name.trim())).collect()
    })
}

/// Answers, then closes the connection (Kafka's way after a refused
/// handshake or a failed authentication).
fn then_close(response: Response) -> Reply {
    match response {
        Response::Frame(frame) => Reply::Now(Response::Close(Some(frame))),
        other => Reply::Now(other),
    }
}

pub(crate) fn handshake(ctx: Ctx, body: Bytes, session: &Session) -> Reply {
    let request: SaslHandshakeRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let enabled = enabled(&ctx);
    let names: Vec<StrBytes> = enabled.iter().map(|m| StrBytes::from_static_str(m.name())).collect();
    let answer = |code: i16| {
        respond(&ctx, &SaslHandshakeResponse::default().with_error_code(code).with_mechanisms(names.clone()))
    };
    let mut state = session.sasl.borrow_mut();
    // KIP-368: with connections.max.reauth.ms, an authenticated client
    // logs in again on the same connection, starting with a handshake.
    let reauthentication = session.authenticated.get()
        && matches!(*state, SaslState::Over)
        && ctx.shard.shared.config.connections_max_reauth_ms > 0
        && ctx.version >= 1;
    if !session.protocol.uses_sasl() || !(matches!(*state, SaslState::Start) || reauthentication) {
        // Kafka answers a handshake on a listener without SASL, or after
        // one, with ILLEGAL_SASL_STATE; a second one in the middle of an
        // exchange closes the connection.
        let closing = matches!(*state, SaslState::Exchanging(_));
        let response = answer(K::IllegalSaslState.code());
        return if closing { then_close(response) } else { Reply::Now(response) };
    }
    let asked = request.mechanism.as_str();
    let Some(mechanism) = enabled.iter().copied().find(|m| m.name() == asked) else {
        tracing::info!(client = %session.client_host, mechanism = asked, offered = ?names,
            "closing a Kafka connection: a SASL mechanism this listener does not offer");
        return then_close(answer(K::UnsupportedSaslMechanism.code()));
    };
    *state = if ctx.version == 0 { SaslState::Legacy } else { SaslState::Exchanging(Exchange::new(mechanism)) };
    Reply::Now(answer(0))
}

pub(crate) fn authenticate(ctx: Ctx, body: Bytes, session: &Session) -> Reply {
    let request: SaslAuthenticateRequest = match decode(&ctx, body) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let lifetime_ms = ctx.shard.shared.config.connections_max_reauth_ms;
    let answer = |code: i16, message: Option<String>, token: Vec<u8>, lifetime_ms: u64| {
        let response = SaslAuthenticateResponse::default()
            .with_error_code(code)
            .with_error_message(message.map(StrBytes::from_string))
            .with_auth_bytes(Bytes::from(token))
            .with_session_lifetime_ms(i64::try_from(lifetime_ms).unwrap_or(i64::MAX));
        respond(&ctx, &response)
    };
    let mut state = session.sasl.borrow_mut();
    let SaslState::Exchanging(exchange) = &mut *state else {
        if session.authenticated.get() && !session.protocol.uses_sasl() {
            let message = "SaslAuthenticate on a listener without SASL".to_string();
            return Reply::Now(answer(K::IllegalSaslState.code(), Some(message), Vec::new(), 0));
        }
        if session.authenticated.get() {
            let message = "SaslAuthenticate request received after successful authentication".to_string();
            return Reply::Now(answer(K::IllegalSaslState.code(), Some(message), Vec::new(), 0));
        }
        let message = "SaslAuthenticate before a SaslHandshake chose a mechanism".to_string();
        return then_close(answer(K::IllegalSaslState.code(), Some(message), Vec::new(), 0));
    };
    let mechanism = exchange.mechanism();
    let credentials = ctx.shard.shared.catalog.load().scram_credentials.clone();
    let oauth = ctx.shard.shared.oauth.load();
    match exchange.step(&request.auth_bytes, Verifiers { scram: &credentials, oauth: oauth.as_deref() }) {
        Step::Challenge(token) => Reply::Now(answer(0, None, token, 0)),
        Step::Success { user, token } => {
            let principal = Principal::user(user);
            *state = SaslState::Over;
            if session.authenticated.get() && **session.principal.borrow() != principal {
                // KIP-368: a re-authentication may not change who the
                // connection is.
                let message = format!(
                    "Cannot change principals during re-authentication from {}: {principal}",
                    session.principal.borrow()
                );
                tracing::warn!(client = %session.client_host, "{message}");
                return then_close(answer(K::SaslAuthenticationFailed.code(), Some(message), Vec::new(), 0));
            }
            tracing::info!(client = %session.client_host, %principal, mechanism = mechanism.name(), "SASL authentication succeeded");
            *session.principal.borrow_mut() = std::rc::Rc::new(principal);
            session.authenticated.set(true);
            if lifetime_ms > 0 && ctx.version >= 1 {
                let expires = std::time::Instant::now() + std::time::Duration::from_millis(lifetime_ms);
                session.login_expires.set(Some(expires));
            }
            let told_ms = if ctx.version >= 1 { lifetime_ms } else { 0 };
            Reply::Now(answer(0, None, token, told_ms))
        }
        Step::Failure(failure) => {
            *state = SaslState::Over;
            let message = failure.report(&session.client_host, mechanism, "kafka");
            then_close(answer(K::SaslAuthenticationFailed.code(), Some(message), Vec::new(), 0))
        }
    }
}

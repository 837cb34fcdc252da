//! SaslAuthenticate on a native connection (issue 16): the client's SASL
//! tokens go to the connection's `Exchange` (`security/sasl/`, the one
//! the Kafka listeners use), against the SCRAM credentials of the metadata.
//! Answered at once (`Reply::Now`), so a success has set the session's
//! principal before the connection's next request is dispatched.
//!
//! Authentication is optional on the native ports: a connection that does
//! not authenticate stays `User:ANONYMOUS`, and the ACLs (`authz.rs`) say
//! what that may do, as for a PLAINTEXT Kafka listener. A failure answers
//! SaslAuthenticationFailed with Kafka's text and closes the connection.

use std::rc::Rc;

use spate_flatbuf::Frame;
use spate_flatbuf::flatbuffers::FlatBufferBuilder;
use spate_flatbuf::proto::*;

use super::Session;
use crate::security::Principal;
use crate::security::sasl::{Exchange, Mechanism, Step, Verifiers, enabled_mechanisms};
use crate::shard::Shard;
use crate::wire::{Reply, Response, envelope, envelope_frame, invalid};

/// Where a native connection is in its SASL authentication.
#[derive(Debug, Default)]
pub(crate) enum SaslState {
    #[default]
    Start,
    Exchanging(Exchange),
    /// Authenticated (or failed, and the connection is closing).
    Over,
}

fn answer(request_id: u64, error: ErrorCode, message: Option<&str>, token: &[u8], complete: bool) -> bytes::Bytes {
    let mut builder = FlatBufferBuilder::new();
    let message = message.map(|m| builder.create_string(m));
    let auth_bytes = builder.create_vector(token);
    let body = SaslAuthenticateResponse::create(
        &mut builder,
        &SaslAuthenticateResponseArgs { error, message, auth_bytes: Some(auth_bytes), complete },
    );
    envelope_frame(builder, request_id, Body::SaslAuthenticateResponse, body.as_union_value(), 0)
}

pub(super) fn authenticate(shard: &Rc<Shard>, session: &Session, frame: &Frame, request_id: u64) -> Reply {
    let Some(request) = envelope(frame).and_then(|e| e.body_as_sasl_authenticate_request()) else {
        return invalid(request_id, "sasl authenticate body missing");
    };
    let token = request.auth_bytes().map(|bytes| bytes.bytes()).unwrap_or_default();
    let mut state = session.sasl.borrow_mut();
    if matches!(*state, SaslState::Start) {
        let offered = enabled_mechanisms(&shard.shared.config.sasl_enabled_mechanisms).unwrap_or_default();
        let asked = request.mechanism().unwrap_or_default();
        let Some(mechanism) = Mechanism::parse(asked).filter(|m| offered.contains(m)) else {
            let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
            let message = format!("SASL mechanism {asked:?} is not offered; this broker offers {}", names.join(", "));
            tracing::info!(client = %session.host, mechanism = asked, "closing a native connection: {message}");
            let frame = answer(request_id, ErrorCode::UnsupportedSaslMechanism, Some(&message), &[], false);
            return Reply::Now(Response::Close(Some(frame)));
        };
        *state = SaslState::Exchanging(Exchange::new(mechanism));
    }
    let SaslState::Exchanging(exchange) = &mut *state else {
        let message = "SaslAuthenticate after the connection authenticated";
        return Reply::Now(Response::Frame(answer(
            request_id,
            ErrorCode::UnsupportedSaslMechanism,
            Some(message),
            &[],
            false,
        )));
    };
    let mechanism = exchange.mechanism();
    let credentials = shard.shared.catalog.load().scram_credentials.clone();
    let oauth = shard.shared.oauth.load();
    match exchange.step(token, Verifiers { scram: &credentials, oauth: oauth.as_deref() }) {
        Step::Challenge(token) => Reply::Now(Response::Frame(answer(request_id, ErrorCode::None, None, &token, false))),
        Step::Success { user, token } => {
            tracing::info!(client = %session.host, %user, mechanism = mechanism.name(),
                "SASL authentication succeeded (native)");
            *session.principal.borrow_mut() = Rc::new(Principal::user(user));
            *state = SaslState::Over;
            Reply::Now(Response::Frame(answer(request_id, ErrorCode::None, None, &token, true)))
        }
        Step::Failure(failure) => {
            *state = SaslState::Over;
            let message = failure.report(&session.host, mechanism, "native");
            let frame = answer(request_id, ErrorCode::SaslAuthenticationFailed, Some(&message), &[], false);
            Reply::Now(Response::Close(Some(frame)))
        }
    }
}

//! The operations of one authenticated WebSocket connection: each client frame is rate-limited,
//! decoded, dispatched (exhaustively: an op nobody handles does not compile) to the
//! [`Service`], and its result encoded; the socket task ([`socket`](super::socket)) reads the
//! frames and writes what a [`Step`] asks for.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use chatfabric_nats::wire::{ConvKind, TypingState};
use chatfabric_nats::{ConvId, UserId};
use futures::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::edge;
use crate::fanout::Outlet;
use crate::protocol::{self, close, ClientFrame, ErrorCode, ServerFrame, ServerOp};
use crate::rate::{RateLimiter, Verdict};
use crate::service::{
    Caller, HistoryRequest, MemberChange, NewConversation, SendRequest, Service, ServiceError,
};
use crate::state::State;

/// What a finished request asks the connection to write.
pub(crate) type Reply = BoxFuture<'static, Option<Utf8Bytes>>;

/// What handling one inbound frame asks of the connection loop.
pub(crate) enum Step {
    /// Write this reply now.
    Reply(Utf8Bytes),
    /// A reply will come from this future.
    Later(Reply),
    /// Close the connection.
    Close(u16, &'static str),
}

/// The authenticated part of a connection.
pub(crate) struct Session {
    state: Arc<State>,
    /// The connection's queue and its user, whom its requests speak for.
    outlet: Outlet,
    /// Conversations this connection subscribed to (unsubscribed on close); subscribing to one
    /// of them again, also after `unsubscribe`, is a re-subscribe.
    pub(crate) subscribed: Vec<ConvId>,
    rate: RateLimiter,
    /// `typing` frames, on top of the general rate limit.
    typing: RateLimiter,
    /// Re-subscribes (each may start a replay), on top of the general rate limit.
    resubscribe: RateLimiter,
    /// `presence` queries, on top of the general rate limit.
    presence: RateLimiter,
    /// `conversations` listings, on top of the general rate limit.
    listing: RateLimiter,
}

impl Session {
    /// A session of `outlet`'s user with the gateway's per-connection limits.
    pub(crate) fn new(state: Arc<State>, outlet: Outlet) -> Self {
        let limits = &state.limits;
        Self {
            rate: RateLimiter::new(limits.rate, limits.burst),
            typing: RateLimiter::new(state.presence.typing_rate, state.presence.typing_burst),
            resubscribe: RateLimiter::new(limits.resubscribe_rate, limits.resubscribe_burst),
            presence: RateLimiter::new(limits.presence_rate, limits.presence_burst),
            listing: RateLimiter::new(limits.listing_rate, limits.listing_burst),
            subscribed: Vec::new(),
            outlet,
            state,
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<&str>) -> Step {
        Step::Reply(error_frame(&self.state, code, message, reference))
    }

    fn flood(&self) -> (u16, &'static str) {
        self.state.metrics.close("flood");
        (close::FLOOD, close::reason(close::FLOOD))
    }

    /// A ping or pong control frame. tungstenite answers pings itself, but they count against the
    /// rate limit like any frame: past it they are ignored, and a flood closes the connection.
    pub(crate) fn control_frame(&mut self) -> Option<(u16, &'static str)> {
        match self.rate.check(Instant::now()) {
            Verdict::Flood => Some(self.flood()),
            Verdict::Allow | Verdict::Refuse => None,
        }
    }

    /// A text frame: rate-limited, decoded, dispatched.
    pub(crate) fn on_text(&mut self, text: &str) -> Step {
        let metrics = &self.state.metrics;
        match self.rate.check(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                return self.error(ErrorCode::RateLimited, "too many frames; slow down", None)
            }
            Verdict::Flood => {
                let (code, reason) = self.flood();
                return Step::Close(code, reason);
            }
        }
        let frame = match protocol::decode(text) {
            Ok(f) => f,
            Err(e) => {
                metrics
                    .frames_in
                    .get_or_create(&crate::metrics::Kind { kind: "invalid" })
                    .inc();
                let reference = protocol::raw_reference(text);
                return self.error(e.code(), e.to_string(), reference.as_deref());
            }
        };
        if protocol::reference_of(&frame).is_some_and(|r| r.len() > 64) {
            return self.error(ErrorCode::Invalid, "ref exceeds 64 bytes", None);
        }
        metrics
            .frames_in
            .get_or_create(&crate::metrics::Kind {
                kind: frame.op().name(),
            })
            .inc();
        self.dispatch(frame)
    }

    /// One decoded frame to its operation. No catch-all: a new op must be handled here.
    fn dispatch(&mut self, frame: ClientFrame) -> Step {
        match frame {
            ClientFrame::Auth { reference, .. } => self.error(
                ErrorCode::Unauthenticated,
                "already authenticated",
                reference.as_deref(),
            ),
            ClientFrame::Ping { reference } => {
                Step::Reply(protocol::encode(&ServerFrame::Pong { reference }).into())
            }
            ClientFrame::Send {
                conv,
                client_id,
                body,
            } => {
                let reference = Some(client_id.clone());
                let request = SendRequest {
                    conv,
                    client_id,
                    body,
                };
                self.later(reference, |service, caller| async move {
                    let sent = service.send(&caller, request).await?;
                    Ok(Some(Answer::Frame(edge::ack(sent))))
                })
            }
            ClientFrame::Subscribe {
                conv,
                after,
                reference,
            } => self.subscribe(conv, after, reference),
            ClientFrame::Unsubscribe { conv, reference } => {
                self.state.service.unsubscribe(&conv, self.outlet.conn);
                Step::Reply(
                    protocol::encode(&ServerFrame::Unsubscribed {
                        conv,
                        reason: "requested".into(),
                        reference,
                    })
                    .into(),
                )
            }
            ClientFrame::History {
                conv,
                before,
                after,
                limit,
                reference,
            } => {
                let request = HistoryRequest {
                    conv,
                    before,
                    after,
                    limit: limit.unwrap_or(protocol::DEFAULT_HISTORY_LIMIT),
                };
                self.later(reference.clone(), |service, caller| async move {
                    let page = service.history(&caller, &request).await?;
                    let frame =
                        protocol::encode_history(&request.conv, &page, reference.as_deref());
                    Ok(Some(Answer::Encoded(ServerOp::History, frame)))
                })
            }
            ClientFrame::Typing {
                conv,
                state,
                reference,
            } => self.typing(conv, state, reference),
            ClientFrame::Read {
                conv,
                seq,
                reference,
            } => self.later(reference.clone(), |service, caller| async move {
                let seq = service.mark_read(&caller, &conv, seq).await?;
                let user = caller.acting_as().clone();
                Ok(Some(Answer::Frame(ServerFrame::Read {
                    conv,
                    user,
                    seq,
                    reference,
                })))
            }),
            ClientFrame::Presence { user, reference } => {
                if self.presence.check(Instant::now()) != Verdict::Allow {
                    return self.error(
                        ErrorCode::RateLimited,
                        "too many presence queries; slow down",
                        reference.as_deref(),
                    );
                }
                self.later(reference.clone(), |service, caller| async move {
                    let presence = service.presence(&caller, &user).await?;
                    Ok(Some(Answer::Frame(ServerFrame::Presence {
                        user,
                        online: presence.online,
                        last_seen: presence.last_seen,
                        reference,
                    })))
                })
            }
            ClientFrame::Conversations {
                after,
                limit,
                reference,
            } => {
                if self.listing.check(Instant::now()) != Verdict::Allow {
                    return self.error(
                        ErrorCode::RateLimited,
                        "too many conversations listings; slow down",
                        reference.as_deref(),
                    );
                }
                self.later(reference.clone(), |service, caller| async move {
                    let (page, next) = service
                        .conversations(&caller, after.as_ref(), limit)
                        .await?;
                    Ok(Some(Answer::Frame(ServerFrame::Conversations {
                        conversations: page.into_iter().map(edge::view).collect(),
                        next,
                        reference,
                    })))
                })
            }
            ClientFrame::Create {
                kind,
                with,
                members,
                title,
                reference,
            } => {
                let new = match (kind, with) {
                    (ConvKind::Direct, Some(with)) => NewConversation::Direct { with },
                    (ConvKind::Direct, None) => {
                        return self.error(
                            ErrorCode::Invalid,
                            "a direct conversation needs \"with\"",
                            reference.as_deref(),
                        )
                    }
                    (ConvKind::Group, _) => NewConversation::Group { members, title },
                };
                self.later(reference.clone(), |service, caller| async move {
                    let created = service.create(&caller, new).await?;
                    Ok(Some(Answer::Frame(ServerFrame::Conversation {
                        conversation: edge::view(created.info),
                        members: created.members,
                        reference,
                    })))
                })
            }
            ClientFrame::AddMember {
                conv,
                user,
                reference,
            } => self.change_member(MemberChange::Add, conv, user, reference),
            ClientFrame::RemoveMember {
                conv,
                user,
                reference,
            } => self.change_member(MemberChange::Remove, conv, user, reference),
            ClientFrame::Members { conv, reference } => {
                self.later(reference.clone(), |service, caller| async move {
                    let members = service.members(&caller, &conv).await?;
                    Ok(Some(members_frame(conv, members, reference)))
                })
            }
        }
    }

    /// A request the service answers: `work` gets the service and this connection's caller; its
    /// answer (if any) is the reply, and an error becomes an `error` frame echoing `reference`.
    fn change_member(
        &self,
        change: MemberChange,
        conv: ConvId,
        user: UserId,
        reference: Option<String>,
    ) -> Step {
        self.later(reference.clone(), move |service, caller| async move {
            let members = service.change_member(&caller, change, &conv, &user).await?;
            Ok(Some(members_frame(conv, members, reference)))
        })
    }

    fn later<F, Fut>(&self, reference: Option<String>, work: F) -> Step
    where
        F: FnOnce(Arc<Service>, Caller) -> Fut,
        Fut: Future<Output = Result<Option<Answer>, ServiceError>> + Send + 'static,
    {
        let state = self.state.clone();
        let answer = work(
            state.service.clone(),
            Caller::User(self.outlet.user.clone()),
        );
        Step::Later(Box::pin(async move {
            match answer.await {
                Ok(answer) => answer.map(|a| a.encode(&state)),
                Err(e) => Some(error_frame(
                    &state,
                    edge::code(&e),
                    e.to_string(),
                    reference.as_deref(),
                )),
            }
        }))
    }

    fn subscribe(&mut self, conv: ConvId, after: Option<u64>, reference: Option<String>) -> Step {
        if !self.subscribed.contains(&conv) {
            self.subscribed.push(conv.clone());
        } else if self.resubscribe.check(Instant::now()) != Verdict::Allow {
            return self.error(
                ErrorCode::RateLimited,
                "too many re-subscribes; slow down",
                reference.as_deref(),
            );
        }
        let outlet = self.outlet.clone();
        self.later(reference.clone(), |service, caller| async move {
            // On success the fan-out queues the `subscribed` frame itself, ahead of the replay.
            service
                .subscribe(&caller, &conv, outlet, after, reference)
                .await?;
            Ok(None)
        })
    }

    fn typing(&mut self, conv: ConvId, typing: TypingState, reference: Option<String>) -> Step {
        // Refusals never close the connection: typing is advisory, so it is simply dropped.
        if self.typing.check(Instant::now()) != Verdict::Allow {
            return self.error(
                ErrorCode::RateLimited,
                "too many typing frames; the frame was dropped",
                reference.as_deref(),
            );
        }
        self.later(reference, |service, caller| async move {
            service.typing(&caller, &conv, typing).await?;
            Ok(None)
        })
    }
}

/// A successful reply: a frame, or one encoded already (a history page).
enum Answer {
    Frame(ServerFrame),
    Encoded(ServerOp, String),
}

impl Answer {
    /// The reply's bytes, counted in `frames_out`.
    fn encode(self, state: &State) -> Utf8Bytes {
        let (op, text) = match self {
            Self::Frame(frame) => (frame.op(), protocol::encode(&frame)),
            Self::Encoded(op, text) => (op, text),
        };
        state.metrics.frame_out(op.name());
        text.into()
    }
}

fn members_frame(conv: ConvId, members: Vec<UserId>, reference: Option<String>) -> Answer {
    Answer::Frame(ServerFrame::Members {
        conv,
        members,
        reference,
    })
}

fn error_frame(
    state: &State,
    code: ErrorCode,
    message: impl Into<String>,
    reference: Option<&str>,
) -> Utf8Bytes {
    state.metrics.error(code.as_str());
    state.metrics.frame_out(ServerOp::Error.name());
    protocol::encode(&ServerFrame::Error {
        code,
        message: message.into(),
        reference: reference.map(str::to_owned),
    })
    .into()
}

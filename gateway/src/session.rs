//! The operations of one authenticated WebSocket connection: each client frame, validated and
//! dispatched to membership, send, fan-out, history, presence and receipts; the socket task
//! ([`connection`](crate::connection)) reads the frames and writes what a [`Step`] asks for.

use std::sync::Arc;
use std::time::Instant;

use chatfabric_nats::{ConvId, UserId};
use futures::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::fanout::Outlet;
use crate::protocol::{self, close, ClientFrame, ErrorCode, ServerFrame};
use crate::rate::{RateLimiter, Verdict};
use crate::send;
use crate::State;

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

    fn user(&self) -> &UserId {
        &self.outlet.user
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
        let reference = protocol::reference_of(&frame).map(str::to_owned);
        if reference.as_ref().is_some_and(|r| r.len() > 64) {
            return self.error(ErrorCode::Invalid, "ref exceeds 64 bytes", None);
        }
        let reference = reference.as_deref();
        metrics
            .frames_in
            .get_or_create(&crate::metrics::Kind {
                kind: op_name(&frame),
            })
            .inc();
        match frame {
            ClientFrame::Auth { .. } => self.error(
                ErrorCode::Unauthenticated,
                "already authenticated",
                reference,
            ),
            ClientFrame::Ping { reference } => {
                Step::Reply(protocol::encode(&ServerFrame::Pong { reference }).into())
            }
            ClientFrame::Send {
                conv,
                client_id,
                body,
            } => self.send(conv, client_id, body),
            ClientFrame::Subscribe {
                conv,
                after,
                reference,
            } => self.subscribe(conv, after, reference),
            ClientFrame::Unsubscribe { conv, reference } => {
                self.state.hub.unsubscribe(&conv, self.outlet.conn);
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
            } => self.history(conv, before, after, limit, reference),
            ClientFrame::Typing {
                conv,
                state,
                reference,
            } => self.typing(conv, state, reference),
            ClientFrame::Read {
                conv,
                seq,
                reference,
            } => self.read(conv, seq, reference),
            ClientFrame::Presence { user, reference } => {
                if self.presence.check(Instant::now()) != Verdict::Allow {
                    return self.error(
                        ErrorCode::RateLimited,
                        "too many presence queries; slow down",
                        reference.as_deref(),
                    );
                }
                self.presence(user, reference)
            }
            ClientFrame::Conversations { reference, .. }
                if self.listing.check(Instant::now()) != Verdict::Allow =>
            {
                self.error(
                    ErrorCode::RateLimited,
                    "too many conversations listings; slow down",
                    reference.as_deref(),
                )
            }
            other => self.membership_op(other),
        }
    }

    /// A request that needs membership of `conv`: `work` runs once it is confirmed; a refusal, or
    /// a failure `work` reports, becomes an `error` frame echoing `reference`.
    fn as_member<F, Fut>(&self, conv: ConvId, reference: Option<String>, work: F) -> Step
    where
        F: FnOnce(Arc<State>, ConvId, UserId) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<Utf8Bytes>, (ErrorCode, String)>>
            + Send
            + 'static,
    {
        let state = self.state.clone();
        let user = self.user().clone();
        Step::Later(Box::pin(async move {
            let result = match state.membership.require_member(&conv, &user).await {
                Ok(()) => work(state.clone(), conv, user).await,
                Err(e) => Err((e.code(), e.to_string())),
            };
            result.unwrap_or_else(|(code, message)| {
                Some(error_frame(&state, code, message, reference.as_deref()))
            })
        }))
    }

    fn send(&mut self, conv: ConvId, client_id: String, body: String) -> Step {
        if let Err(e) = send::validate(&client_id, &body, self.state.limits.max_body) {
            return self.error(e.code(), e.to_string(), Some(&client_id));
        }
        let reference = Some(client_id.clone());
        self.as_member(conv, reference, move |state, conv, user| async move {
            let timeout = state.limits.publish_timeout;
            let reply_id = client_id.clone();
            let published = send::publish(
                &state.fabric,
                &state.metrics,
                conv.clone(),
                user,
                client_id,
                body,
                timeout,
            )
            .await;
            match published {
                Ok(stored) => {
                    state.metrics.frame_out("ack");
                    let ack = ServerFrame::Ack {
                        conv,
                        client_id: reply_id,
                        seq: stored.seq,
                        duplicate: stored.duplicate,
                    };
                    Ok(Some(protocol::encode(&ack).into()))
                }
                Err(e) => {
                    tracing::warn!(conv = %conv, error = %e, "send failed");
                    Err((e.code(), e.to_string()))
                }
            }
        })
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
        self.as_member(conv, reference.clone(), move |state, conv, _| async move {
            // On success the fan-out queues the `subscribed` frame itself, ahead of the replay.
            state
                .hub
                .subscribe(&conv, outlet, after, reference)
                .await
                .map(|_| None)
                .map_err(|e| (e.code(), e.to_string()))
        })
    }

    fn history(
        &mut self,
        conv: ConvId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<usize>,
        reference: Option<String>,
    ) -> Step {
        let limits = &self.state.limits;
        if !self
            .state
            .history_limits
            .allow(self.user(), limits.history_rate, limits.history_burst)
        {
            return self.error(
                ErrorCode::RateLimited,
                "too many history reads; slow down",
                reference.as_deref(),
            );
        }
        self.as_member(conv, reference.clone(), move |state, conv, _| async move {
            let limit = limit.unwrap_or(protocol::DEFAULT_HISTORY_LIMIT);
            let page = state
                .history
                .page(&conv, before, after, limit)
                .await
                .map_err(|e| (e.code(), e.to_string()))?;
            state.metrics.frame_out("history");
            Ok(Some(
                protocol::encode_history(&conv, &page, reference.as_deref()).into(),
            ))
        })
    }

    fn typing(
        &mut self,
        conv: ConvId,
        typing: chatfabric_nats::wire::TypingState,
        reference: Option<String>,
    ) -> Step {
        // Refusals never close the connection: typing is advisory, so it is simply dropped.
        if self.typing.check(Instant::now()) != Verdict::Allow {
            return self.error(
                ErrorCode::RateLimited,
                "too many typing frames; the frame was dropped",
                reference.as_deref(),
            );
        }
        self.as_member(conv, reference, move |state, conv, user| async move {
            let event = chatfabric_nats::wire::EphemeralEvent::Typing {
                conv: conv.clone(),
                user,
                state: typing,
                expires_in: state.presence.typing_ttl.as_millis() as u64,
            };
            let subject = chatfabric_nats::subject::ephemeral_subject(
                &conv,
                chatfabric_nats::subject::Ephemeral::Typing,
            );
            let payload = protocol::encode_event(&event);
            state
                .fabric
                .client
                .publish(subject, payload.into())
                .await
                .map(|()| None)
                .map_err(|e| (ErrorCode::Unavailable, e.to_string()))
        })
    }

    fn read(&mut self, conv: ConvId, seq: u64, reference: Option<String>) -> Step {
        self.as_member(
            conv,
            reference.clone(),
            move |state, conv, user| async move {
                let seq = crate::receipts::mark_read(&state.fabric, &conv, &user, seq)
                    .await
                    .map_err(|e| (e.code(), e.to_string()))?;
                state.metrics.frame_out("read");
                let frame = ServerFrame::Read {
                    conv,
                    user,
                    seq,
                    reference,
                };
                Ok(Some(protocol::encode(&frame).into()))
            },
        )
    }

    fn presence(&mut self, user: UserId, reference: Option<String>) -> Step {
        let state = self.state.clone();
        let me = self.user().clone();
        Step::Later(Box::pin(async move {
            // The same answer whether the user does not exist or shares nothing with the caller:
            // a query must not reveal more than the events would.
            match state.membership.share_a_conversation(&me, &user).await {
                Ok(true) => {}
                Ok(false) => {
                    return Some(error_frame(
                        &state,
                        ErrorCode::Forbidden,
                        "you share no conversation with this user",
                        reference.as_deref(),
                    ))
                }
                Err(e) => {
                    return Some(error_frame(
                        &state,
                        e.code(),
                        e.to_string(),
                        reference.as_deref(),
                    ))
                }
            }
            Some(
                match crate::presence::lookup(&state.fabric.presence, &user).await {
                    Ok(entry) => {
                        state.metrics.frame_out("presence");
                        let online = entry.is_some_and(|e| e.online);
                        let last_seen = if online {
                            Some(chatfabric_nats::wire::now_ms())
                        } else {
                            entry.map(|e| e.last_seen)
                        };
                        protocol::encode(&ServerFrame::Presence {
                            user,
                            online,
                            last_seen,
                            reference,
                        })
                        .into()
                    }
                    Err(e) => error_frame(
                        &state,
                        ErrorCode::Unavailable,
                        e.to_string(),
                        reference.as_deref(),
                    ),
                },
            )
        }))
    }

    fn membership_op(&mut self, frame: ClientFrame) -> Step {
        let state = self.state.clone();
        let me = self.user().clone();
        Step::Later(Box::pin(async move {
            let m = &state.membership;
            let result = match frame {
                ClientFrame::Create {
                    kind,
                    with,
                    members,
                    title,
                    reference,
                } => {
                    let created = match (kind, with) {
                        (chatfabric_nats::wire::ConvKind::Direct, Some(other)) => {
                            m.create_direct(&me, &other).await
                        }
                        (chatfabric_nats::wire::ConvKind::Direct, None) => {
                            Err(crate::membership::MembershipError::Invalid(
                                "a direct conversation needs \"with\"".into(),
                            ))
                        }
                        (chatfabric_nats::wire::ConvKind::Group, _) => {
                            m.create_group(&me, members, title).await
                        }
                    };
                    created
                        .map(|(info, members)| ServerFrame::Conversation {
                            conversation: protocol::ConversationView {
                                conv: info.conv,
                                kind: info.kind,
                                title: info.title,
                            },
                            members,
                            reference: reference.clone(),
                        })
                        .map_err(|e| (e, reference))
                }
                ClientFrame::AddMember {
                    conv,
                    user,
                    reference,
                } => match m.add(&me, &conv, &user).await {
                    Ok(()) => members_frame(m, conv, reference).await,
                    Err(e) => Err((e, reference)),
                },
                ClientFrame::RemoveMember {
                    conv,
                    user,
                    reference,
                } => match m.remove(&me, &conv, &user).await {
                    Ok(()) => members_frame(m, conv, reference).await,
                    Err(e) => Err((e, reference)),
                },
                ClientFrame::Members { conv, reference } => {
                    match m.require_member(&conv, &me).await {
                        Ok(()) => members_frame(m, conv, reference).await,
                        Err(e) => Err((e, reference)),
                    }
                }
                ClientFrame::Conversations {
                    after,
                    limit,
                    reference,
                } => {
                    let limit = limit.unwrap_or(crate::membership::MAX_LISTING_PAGE);
                    m.conversations_page(&me, after.as_ref(), limit)
                        .await
                        .map(|(conversations, next)| ServerFrame::Conversations {
                            conversations,
                            next,
                            reference: reference.clone(),
                        })
                        .map_err(|e| (e, reference))
                }
                _ => return None,
            };
            Some(match result {
                Ok(frame) => {
                    state.metrics.frame_out(frame_name(&frame));
                    protocol::encode(&frame).into()
                }
                Err((e, reference)) => {
                    error_frame(&state, e.code(), e.to_string(), reference.as_deref())
                }
            })
        }))
    }
}

async fn members_frame(
    m: &crate::membership::Membership,
    conv: ConvId,
    reference: Option<String>,
) -> Result<ServerFrame, (crate::membership::MembershipError, Option<String>)> {
    match m.members(&conv).await {
        Ok(members) => Ok(ServerFrame::Members {
            conv,
            members,
            reference,
        }),
        Err(e) => Err((e, reference)),
    }
}

fn error_frame(
    state: &State,
    code: ErrorCode,
    message: impl Into<String>,
    reference: Option<&str>,
) -> Utf8Bytes {
    state.metrics.error(code.as_str());
    state.metrics.frame_out("error");
    protocol::encode(&ServerFrame::Error {
        code,
        message: message.into(),
        reference: reference.map(str::to_owned),
    })
    .into()
}

fn op_name(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Subscribe { .. } => "subscribe",
        ClientFrame::Unsubscribe { .. } => "unsubscribe",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Create { .. } => "create",
        ClientFrame::AddMember { .. } => "add_member",
        ClientFrame::RemoveMember { .. } => "remove_member",
        ClientFrame::Conversations { .. } => "conversations",
        ClientFrame::Members { .. } => "members",
        ClientFrame::History { .. } => "history",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Read { .. } => "read",
        ClientFrame::Presence { .. } => "presence",
        ClientFrame::Ping { .. } => "ping",
    }
}

fn frame_name(frame: &ServerFrame) -> &'static str {
    match frame {
        ServerFrame::Ready { .. } => "ready",
        ServerFrame::Subscribed { .. } => "subscribed",
        ServerFrame::Unsubscribed { .. } => "unsubscribed",
        ServerFrame::Ack { .. } => "ack",
        ServerFrame::Conversation { .. } => "conversation",
        ServerFrame::Conversations { .. } => "conversations",
        ServerFrame::Members { .. } => "members",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::Read { .. } => "read",
        ServerFrame::Unread { .. } => "unread",
        ServerFrame::Pong { .. } => "pong",
        ServerFrame::Error { .. } => "error",
    }
}

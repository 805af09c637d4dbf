//! Live alerts: server-sent events for each arrival the account may see.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::{pages, visible, Find, Web, STREAMS_IN_ALL, STREAMS_PER_SESSION};

/// Holds one live-alert stream's place in the counts; gives it back when the stream ends.
struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<crate::encoding::Digest, usize>>>,
    key: crate::encoding::Digest,
}

impl StreamSlot {
    fn take(web: &Web, token: &str) -> Option<Self> {
        let key = crate::encoding::Digest::of(token.as_bytes());
        let mut m = web.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let all: usize = m.values().sum();
        let mine = m.get(&key).copied().unwrap_or(0);
        if all >= STREAMS_IN_ALL || mine >= STREAMS_PER_SESSION {
            return None;
        }
        m.insert(key, mine + 1);
        Some(Self { streams: web.streams.clone(), key })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Live alerts: a `packet` event for each arrival the account may see, a `signed-out` event
/// when its session ends. The stream does not keep the session alive (an unattended tab is
/// signed out at the idle time); a session holds at most [`STREAMS_PER_SESSION`] streams.
pub(super) async fn events(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(o) = web.officer(&headers, false) else { return StatusCode::UNAUTHORIZED.into_response() };
    let Some(slot) = StreamSlot::take(&web, &o.token) else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many live-alert streams open").into_response();
    };
    let rx = web.node.arrivals();
    let state = (web, o.token, o.session.generation, o.account, rx, slot);
    let stream = futures_util::stream::unfold(Some(state), |state| async move {
        let (web, token, generation, account, mut rx, slot) = state?;
        loop {
            let alive = web.sessions.get(&token, Instant::now(), false).is_some()
                && web.node.accounts().get(&account.name).is_some_and(|a| a.session_valid(generation));
            if !alive {
                let ev = SseEvent::default().event("signed-out").data("");
                return Some((Ok::<_, std::convert::Infallible>(ev), None));
            }
            let next = tokio::select! {
                () = web.closing.cancelled() => return None,
                next = tokio::time::timeout(Duration::from_secs(15), rx.recv()) => next,
            };
            let arrival = match next {
                Err(_) => continue,
                Ok(Ok(a)) => a,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    let ev = SseEvent::default().event("reload").data("");
                    return Some((Ok(ev), Some((web, token, generation, account, rx, slot))));
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            };
            let who = account.clone();
            let seen = web
                .node
                .catalogue(move |c| {
                    // The unread count only for a row this account sees.
                    let row = c.row(arrival.id, &arrival.from).filter(|r| visible(&who, r)).cloned()?;
                    let unread = c.page(&Find::default(), |r| visible(&who, r), 0, 0).unread;
                    Some((row, unread))
                })
                .await;
            let Ok(Some((row, unread))) = seen else { continue };
            let data = serde_json::json!({
                "id": row.id.to_string(),
                "from": row.from.to_string(),
                "priority": pages::wire(&row.priority),
                "type": row.packet_type.as_str(),
                "case_ref": row.case_ref.as_ref().map(|c| c.as_str().to_owned()),
                "summary": row.summary,
                "markings": pages::badges(row.classification, row.tlp, &row.handling, row.grading),
                "received": pages::when_ms(row.received_at),
                "url": pages::packet_url(&row),
                "unread": unread,
            });
            let ev = SseEvent::default().event("packet").data(data.to_string());
            return Some((Ok(ev), Some((web, token, generation, account, rx, slot))));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

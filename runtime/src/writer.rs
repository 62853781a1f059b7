//! The one WebSocket writer both ends use: a task that owns the sink and sends
//! what the connection loop queues, coalescing whatever is queued into one
//! flush, so a burst of small replies or acks costs one write.

use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;

/// What the writer needs to know of a queued message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// A text or binary frame (counted in [`coalesce`]'s flush report).
    Data,
    /// A ping or pong.
    Control,
    /// A close frame: sent, flushed, then the writer ends.
    Close,
}

/// Sends queued messages until a close frame is sent, the queue closes, or
/// the socket fails. After each flush `flushed` gets the number of data frames
/// it carried. Ends by closing the sink, except after a socket error, which it
/// returns.
pub async fn coalesce<S, M>(
    mut sink: S,
    mut rx: mpsc::Receiver<M>,
    classify: impl Fn(&M) -> Outgoing,
    mut flushed: impl FnMut(u64),
) -> Result<(), S::Error>
where
    S: Sink<M> + Unpin,
{
    while let Some(msg) = rx.recv().await {
        let mut closing = false;
        let mut data = 0;
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match classify(&msg) {
                Outgoing::Data => data += 1,
                Outgoing::Control => {}
                Outgoing::Close => closing = true,
            }
            sink.feed(msg).await?;
            if !closing {
                next = rx.try_recv().ok();
            }
        }
        sink.flush().await?;
        flushed(data);
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::sink::drain;

    #[tokio::test]
    async fn queued_messages_share_a_flush_and_a_close_ends_the_writer() {
        let (tx, rx) = mpsc::channel(8);
        for m in ["a", "b", "close", "never"] {
            tx.send(m).await.unwrap();
        }
        let mut flushes = Vec::new();
        let classify = |m: &&str| match *m {
            "close" => Outgoing::Close,
            _ => Outgoing::Data,
        };
        coalesce(drain(), rx, classify, |n| flushes.push(n))
            .await
            .unwrap();
        assert_eq!(flushes, vec![2]);
    }
}

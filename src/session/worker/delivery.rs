//! Proof that claude took a turn in. Claude acknowledges nothing, and a channel message it
//! was not listening for is lost without a trace; so a sent turn counts as delivered only
//! once Claude's transcript records it (or a reply for it arrives). Not seen within
//! `delivery_timeout`: sent once more; still not seen: the turn fails and the process is
//! restarted.

use std::time::Instant;

use super::{DELIVERY_CHECK, Phase, Worker};
use crate::metrics::METRICS;
use crate::protocol::BridgeFrame;
use crate::session::turn::{FailureKind, TurnFailure};

/// Where the delivery of the turn in flight stands.
pub(super) struct Delivery {
    frame: BridgeFrame,
    sent_at: Instant,
    attempts: u32,
    pub confirmed: bool,
    pub next_check: Instant,
}

impl Delivery {
    pub fn new(frame: BridgeFrame) -> Self {
        let now = Instant::now();
        Delivery {
            frame,
            sent_at: now,
            attempts: 1,
            confirmed: false,
            next_check: now + DELIVERY_CHECK,
        }
    }
}

impl Worker {
    /// Busy: looks for the turn in the transcript when a check is due; resends once; Err when
    /// the turn must fail.
    pub(super) fn check_delivery(&mut self) -> Result<(), TurnFailure> {
        let screen = self.screen_tail();
        let Phase::Busy { agent, turn } = &mut self.phase else {
            return Ok(());
        };
        let Some(delivery) = turn.delivery.as_mut() else {
            return Ok(());
        };
        if delivery.confirmed || Instant::now() < delivery.next_check {
            return Ok(());
        }
        let recorded = self.settings.agents.transcript_mentions_turn(
            &self.identity.workspace,
            &self.identity.claude_session,
            &turn.claude_id,
        );
        if recorded {
            delivery.confirmed = true;
            METRICS.deliveries_confirmed.inc();
            return Ok(());
        }
        let timeout = self.settings.delivery_timeout;
        if delivery.sent_at.elapsed() >= timeout {
            if delivery.attempts >= 2 {
                METRICS.delivery_failures.inc();
                return Err(TurnFailure::new(
                    FailureKind::AgentDied,
                    format!(
                        "claude did not take the turn in (not in its transcript {timeout:?} after each of two deliveries); its process is restarted. Last screen lines:\n{screen}"
                    ),
                ));
            }
            log::warn!(
                "session {:?} {}: not in claude's transcript after {timeout:?}; sending it once more",
                self.key,
                turn.turn.id
            );
            METRICS.delivery_retries.inc();
            let link = agent.link.as_mut().ok_or_else(|| {
                TurnFailure::new(FailureKind::AgentDied, "the channel is gone; retry")
            })?;
            link.send(&delivery.frame).map_err(|e| {
                TurnFailure::new(
                    FailureKind::AgentDied,
                    format!("could not deliver the turn again ({e}); retry"),
                )
            })?;
            delivery.attempts += 1;
            delivery.sent_at = Instant::now();
        }
        delivery.next_check = Instant::now() + DELIVERY_CHECK;
        Ok(())
    }
}

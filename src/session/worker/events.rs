//! The worker's event source: one `poll(2)` over everything the worker owns (its waker, the
//! agent's terminal and exit descriptors, the channel link), always with a deadline, so the
//! worker drains the terminal, notices a dead child and sees replies without a helper thread.

use std::time::{Duration, Instant};

use super::{Event, Phase, Worker};
use crate::poll::wait_readable;

impl Worker {
    /// Waits until something happens or `deadline` passes (then `Event::Tick`).
    pub(super) fn wait(&mut self, deadline: Instant) -> Event {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Event::Frame(frame);
            }
            if let Some(control) = self.pending_control.take() {
                return Event::Control(control);
            }
            if let Ok(control) = self.control.try_recv() {
                // A frame already on the socket was sent before this control (say, the final
                // reply before the Stop hook's turn end): read the socket first.
                if let Err(why) = self.read_link() {
                    self.pending_control = Some(control);
                    return Event::ChannelClosed(why);
                }
                if !self.frames.is_empty() {
                    self.pending_control = Some(control);
                    continue;
                }
                return Event::Control(control);
            }
            let now = Instant::now();
            if now >= deadline {
                return Event::Tick;
            }
            let mut fds = vec![self.wake.fd()];
            let agent_fds = self
                .phase
                .agent()
                .map(|a| a.process.fds())
                .unwrap_or_default();
            fds.extend(&agent_fds);
            let link_fd = self
                .phase
                .agent()
                .and_then(|a| a.link.as_ref())
                .map(|l| l.fd());
            fds.extend(link_fd);
            let ready = match wait_readable(&fds, Some(deadline - now)) {
                Ok(ready) => ready,
                Err(e) => {
                    log::error!("session {:?}: poll failed: {e}", self.key);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if ready[0].readable {
                self.wake.drain();
                if !self.control.is_empty() {
                    continue;
                }
                return Event::Tick;
            }
            let agent_ready = &ready[1..1 + agent_fds.len()];
            if agent_ready.iter().any(|r| r.readable || r.hangup) {
                let agent = self
                    .phase
                    .agent_mut()
                    .expect("agent fds come from an agent");
                return match agent.process.on_readable() {
                    Some(how) => Event::AgentExited(how),
                    None => Event::ScreenChanged,
                };
            }
            let link_ready = ready
                .get(1 + agent_fds.len())
                .is_some_and(|r| r.readable || r.hangup);
            if link_ready && let Err(why) = self.read_link() {
                return Event::ChannelClosed(why);
            }
        }
    }

    /// Reads every frame the link has into `frames`; Err (and the link dropped) when it
    /// closed or broke. Ok when there is no link.
    fn read_link(&mut self) -> Result<(), String> {
        let Some(agent) = self.phase.agent_mut() else {
            return Ok(());
        };
        let Some(link) = agent.link.as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        let result = link.read_frames(&mut frames);
        if result.is_err() {
            agent.link = None;
        }
        self.frames.extend(frames);
        result
    }
}

/// Whether `phase` has a process whose channel is connected.
pub(super) fn is_connected(phase: &Phase) -> bool {
    phase.agent().is_some_and(|a| a.link.is_some())
}

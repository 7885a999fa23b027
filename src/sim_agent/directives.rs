//! Per-turn behaviour of the simulated Claude, written into the turn text itself as
//! `[sim:...]` directives, so a black-box test chooses what "Claude" does with nothing but the
//! message it sends.
//!
//! Owns the directive syntax and the plan a turn follows. It must never do I/O: the
//! interactive loop executes the plan.
//!
//! Syntax: `[sim:<item>(,<item>)*]` anywhere in the text, any number of times; an item is
//! `progress=N`, `delay_ms=N`, `no_reply`, `no_final`, `exit=N`, `hang`, `stray`, `drop_first`,
//! `drop_all`, `json_next`, `tool=NAME` (call the client tool NAME; several `tool=` items are
//! parallel calls), `ask=<tool>` (a permission prompt for that tool, relayed to the channel
//! as Claude does; repeat it for several), `linger_ms=N` (Claude's closing model call after
//! the last reply: a channel message arriving meanwhile is folded into this turn, as Claude
//! folds it) or `end_delay_ms=N` (a pause after that, before the turn ends and its Stop
//! hooks run: a message arriving then is only queued). Later items win for numbers; flags only ever
//! switch on. Unknown or malformed items are reported, not fatal.

use std::time::Duration;

/// What one turn does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives {
    /// Progress replies (`final: false`, text `progress i/N`) before the final one.
    pub progress: u32,
    /// Pause before each reply (and before a turn without replies ends).
    pub delay_ms: u64,
    /// Pause after the last reply (and after `linger_ms`) before the turn ends (its Stop
    /// hooks, then the session file says idle); a message arriving then is only queued.
    pub end_delay_ms: u64,
    /// Never call `reply`.
    pub no_reply: bool,
    /// Never send a final reply.
    pub no_final: bool,
    /// Exit the whole process with this code when the turn starts.
    pub exit: Option<u8>,
    /// Do nothing until interrupted or killed.
    pub hang: bool,
    /// First send a reply for a turn that is not running (`turn-0`), as a confused or late
    /// Claude might: the bridge must drop it.
    pub stray: bool,
    /// Client tools to call (in parallel, after the progress replies); their results are
    /// quoted in the final reply.
    pub tools: Vec<String>,
    /// Permission prompts (tool names) shown one after the other after the progress replies
    /// and before the final one, each relayed as `permission_request` and waited on.
    pub ask: Vec<String>,
    /// The next turn replies with this turn's last line starting with `{` (see turns.rs).
    pub json_next: bool,
    /// The closing model call after the last step (a message arriving then is folded in).
    pub linger_ms: u64,
}

/// Largest `progress` honoured (a typo must not turn into a million tool calls).
pub const MAX_PROGRESS: u32 = 1000;

/// One step of a turn's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Sleep(Duration),
    Reply {
        text: String,
        is_final: bool,
    },
    /// Wait until interrupted.
    Hang,
    /// A (progress) reply tagged with a turn id that is not running.
    StrayReply,
    /// Call these client tools at once and wait for every result.
    CallTools(Vec<String>),
    /// Claude's closing model call: wait, folding in any channel message that arrives.
    Closing(Duration),
    /// A permission prompt for `tool`: wait for the channel's verdict (or a key).
    Ask {
        tool: String,
    },
}

impl Directives {
    /// Applies every directive found in `text` on top of `self`; returns the items it could
    /// not understand.
    pub fn apply(&mut self, text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("[sim:") {
            let body_start = start + "[sim:".len();
            let Some(len) = rest[body_start..].find(']') else {
                problems.push(format!("unterminated directive {:?}", &rest[start..]));
                break;
            };
            for item in rest[body_start..body_start + len].split(',') {
                if let Err(problem) = self.apply_item(item.trim()) {
                    problems.push(problem);
                }
            }
            rest = &rest[body_start + len + 1..];
        }
        problems
    }

    fn apply_item(&mut self, item: &str) -> Result<(), String> {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let number = |v: Option<&str>| -> Result<u64, String> {
            v.and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("`{item}` needs a whole number"))
        };
        match (key, value) {
            ("progress", v) => self.progress = number(v)?.min(u64::from(MAX_PROGRESS)) as u32,
            ("delay_ms", v) => self.delay_ms = number(v)?,
            ("linger_ms", v) => self.linger_ms = number(v)?,
            ("end_delay_ms", v) => self.end_delay_ms = number(v)?,
            ("exit", v) => {
                self.exit =
                    Some(u8::try_from(number(v)?).map_err(|_| format!("`{item}`: 0..=255"))?)
            }
            ("no_reply", None) => self.no_reply = true,
            ("no_final", None) => self.no_final = true,
            ("hang", None) => self.hang = true,
            ("stray", None) => self.stray = true,
            ("tool", Some(name)) if !name.is_empty() => self.tools.push(name.to_string()),
            ("ask", Some(tool)) if !tool.is_empty() && self.ask.len() < 10 => {
                self.ask.push(tool.to_string())
            }
            ("json_next", None) => self.json_next = true,
            // Acted on when the notification arrives (see turns.rs), not part of the plan.
            ("drop_first" | "drop_all", None) => {}
            _ => return Err(format!("unknown directive `{item}`")),
        }
        Ok(())
    }

    /// The steps of a turn whose text is `content` (the final reply echoes it whole).
    pub fn plan(&self, content: &str) -> Vec<Step> {
        if self.hang {
            return vec![Step::Hang];
        }
        let delay = Duration::from_millis(self.delay_ms);
        let mut steps = Vec::new();
        if self.stray {
            steps.push(Step::StrayReply);
        }
        let reply = |steps: &mut Vec<Step>, text: String, is_final: bool| {
            if !delay.is_zero() {
                steps.push(Step::Sleep(delay));
            }
            steps.push(Step::Reply { text, is_final });
        };
        if !self.no_reply {
            for i in 1..=self.progress {
                reply(&mut steps, format!("progress {i}/{}", self.progress), false);
            }
            if !self.tools.is_empty() {
                steps.push(Step::CallTools(self.tools.clone()));
            }
        }
        steps.extend(self.ask.iter().map(|tool| Step::Ask { tool: tool.clone() }));
        if !self.no_reply {
            if !self.no_final {
                reply(&mut steps, content.to_string(), true);
            } else if self.progress == 0 {
                reply(&mut steps, content.to_string(), false);
            }
        }
        if steps.is_empty() && !delay.is_zero() {
            steps.push(Step::Sleep(delay));
        }
        if self.linger_ms > 0 {
            steps.push(Step::Closing(Duration::from_millis(self.linger_ms)));
        }
        if self.end_delay_ms > 0 {
            steps.push(Step::Sleep(Duration::from_millis(self.end_delay_ms)));
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Directives, Vec<String>) {
        let mut d = Directives::default();
        let problems = d.apply(text);
        (d, problems)
    }

    #[test]
    fn directives_are_found_anywhere_and_combine() {
        let (d, problems) = parse("hi [sim:progress=2] there [sim:delay_ms=50, no_final]");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            d,
            Directives {
                progress: 2,
                delay_ms: 50,
                no_final: true,
                ..Default::default()
            }
        );
        let (d, _) = parse("[sim:exit=7][sim:hang][sim:no_reply]");
        assert_eq!((d.exit, d.hang, d.no_reply), (Some(7), true, true));
        assert_eq!(parse("plain text [not:sim] [sim").0, Directives::default());
    }

    #[test]
    fn the_closing_call_and_the_hook_delay_come_after_the_last_reply() {
        let (d, problems) = parse("x [sim:linger_ms=300,end_delay_ms=20]");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            d.plan("x"),
            vec![
                Step::Reply {
                    text: "x".into(),
                    is_final: true
                },
                Step::Closing(Duration::from_millis(300)),
                Step::Sleep(Duration::from_millis(20)),
            ]
        );
    }

    #[test]
    fn defaults_apply_first_and_the_turn_overrides() {
        let mut d = Directives::default();
        d.apply("[sim:delay_ms=50,progress=1]");
        d.apply("text [sim:delay_ms=5]");
        assert_eq!((d.delay_ms, d.progress), (5, 1));
    }

    #[test]
    fn bad_items_are_reported_and_ignored() {
        let (d, problems) =
            parse("[sim:progress=x, bogus, exit=300, delay_ms=9, hang=1] [sim:oops");
        assert_eq!(
            d,
            Directives {
                delay_ms: 9,
                ..Default::default()
            }
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert_eq!(parse("[sim:progress=99999]").0.progress, MAX_PROGRESS);
    }

    #[test]
    fn asks_come_after_the_progress_and_before_the_final_reply() {
        let text = "x [sim:progress=1,ask=Bash,ask=Write]";
        let (d, problems) = parse(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            d.plan(text),
            vec![
                Step::Reply {
                    text: "progress 1/1".into(),
                    is_final: false
                },
                Step::Ask {
                    tool: "Bash".into()
                },
                Step::Ask {
                    tool: "Write".into()
                },
                Step::Reply {
                    text: text.into(),
                    is_final: true
                },
            ]
        );
    }

    #[test]
    fn plans_follow_the_directives() {
        let reply = |t: &str, f| Step::Reply {
            text: t.into(),
            is_final: f,
        };
        let ms = |n| Step::Sleep(Duration::from_millis(n));
        let plan = |text: &str| parse(text).0.plan(text);
        assert_eq!(plan("echo me"), vec![reply("echo me", true)]);
        let t = "w [sim:progress=2,delay_ms=10]";
        assert_eq!(
            plan(t),
            vec![
                ms(10),
                reply("progress 1/2", false),
                ms(10),
                reply("progress 2/2", false),
                ms(10),
                reply(t, true)
            ]
        );
        let t = "x [sim:progress=1] [sim:no_final]";
        assert_eq!(plan(t), vec![reply("progress 1/1", false)]);
        let t = "x [sim:no_final]";
        assert_eq!(plan(t), vec![reply(t, false)]);
        assert_eq!(plan("[sim:no_reply,progress=3]"), vec![]);
        assert_eq!(plan("[sim:no_reply,delay_ms=4]"), vec![ms(4)]);
        assert_eq!(plan("[sim:hang,progress=3]"), vec![Step::Hang]);
        let t = "y [sim:end_delay_ms=7]";
        assert_eq!(plan(t), vec![reply(t, true), ms(7)]);
        let t = "w [sim:progress=1,tool=a,tool=b]";
        assert_eq!(
            plan(t),
            vec![
                reply("progress 1/1", false),
                Step::CallTools(vec!["a".into(), "b".into()]),
                reply(t, true)
            ]
        );
    }
}

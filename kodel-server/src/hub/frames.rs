//! What an agent sends, made safe to store and show: frames parsed with every NUL
//! shown as a visible character, and steps bounded in size. And the two ways a frame
//! goes out (a message, a close).

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use kodel_core::protocol::{AgentMessage, MAX_STEP_OUTPUT, ServerMessage, Step, cap_middle};

/// The most one stored step may take.
const MAX_STEP_BYTES: usize = 256 * 1024;

/// A step as it may be stored: outputs and texts cut in the middle to
/// `MAX_STEP_OUTPUT`, and a tool input that still makes it larger than
/// `MAX_STEP_BYTES` replaced by its size.
pub(super) fn bounded(step: Step) -> Step {
    match step {
        Step::Message { text } => Step::Message { text: cap_middle(&text, MAX_STEP_OUTPUT) },
        Step::Tool { call_id, tool, input, output, error, duration_ms } => {
            let mut step = Step::Tool { call_id, tool, input, output: cap_middle(&output, MAX_STEP_OUTPUT), error, duration_ms };
            let size = serde_json::to_string(&step).map_or(0, |s| s.len());
            if size > MAX_STEP_BYTES
                && let Step::Tool { call_id, tool, input, .. } = &mut step
            {
                *input = serde_json::Value::String(format!("[input of {size} bytes cut]"));
                *tool = tool.chars().take(200).collect();
                *call_id = call_id.chars().take(200).collect();
            }
            step
        }
    }
}

/// What a NUL character in an agent's text becomes: PostgreSQL stores no NUL in text or
/// jsonb, and a step refused for one would leave a hole in the task's story (a tool's
/// output of a binary file, `find -print0`).
const NUL_SHOWN_AS: char = '\u{2400}';

/// An agent's frame, with every NUL in its strings shown as `NUL_SHOWN_AS`.
pub(super) fn parse_frame(text: &str) -> serde_json::Result<AgentMessage> {
    // JSON text holds a NUL only escaped; most frames have none.
    if !text.contains("\\u0000") {
        return serde_json::from_str(text);
    }
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    show_nul(&mut value);
    serde_json::from_value(value)
}

fn show_nul(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', &NUL_SHOWN_AS.to_string()),
        Value::Array(items) => items.iter_mut().for_each(show_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                map.extend(entries.into_iter().map(|(k, v)| (k.replace('\0', &NUL_SHOWN_AS.to_string()), v)));
            }
            map.values_mut().for_each(show_nul);
        }
        _ => {}
    }
}

pub(super) async fn send(ws: &mut WebSocket, msg: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(msg).map_err(axum::Error::new)?;
    ws.send(Message::Text(Utf8Bytes::from(text))).await
}

/// The close a broken read stands for: (code, reason), or `None` when the connection
/// itself is gone (nothing can be sent). An agent is told why instead of seeing 1006.
pub(super) fn close_for(e: axum::Error) -> Option<(u16, String)> {
    use tungstenite::Error as E;
    let e = e.into_inner().downcast::<E>().ok()?;
    match *e {
        E::Capacity(c) => Some((1009, format!("frame too large: {c}"))),
        E::Protocol(p) => Some((1002, format!("WebSocket protocol error: {p}"))),
        E::Utf8(_) => Some((1007, "a text frame is not valid UTF-8".to_owned())),
        _ => None,
    }
}

/// How many malformed frames of one connection are logged one by one; after that,
/// every `BAD_FRAME_LOG_EVERY`th (an agent in a loop must not flood the log).
const BAD_FRAMES_LOGGED: u64 = 3;
const BAD_FRAME_LOG_EVERY: u64 = 1000;

/// Whether the `n`th malformed frame of a connection (from 1) gets a log line.
pub(super) fn log_bad_frame(n: u64) -> bool {
    n <= BAD_FRAMES_LOGGED || n.is_multiple_of(BAD_FRAME_LOG_EVERY)
}

pub(super) async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let reason: String = reason.chars().take(120).collect();
    let _ = ws.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_in_an_agents_text_are_shown_not_refused() {
        let frame = r#"{"type":"step.report","job_id":"00000000-0000-0000-0000-000000000001","seq":0,"step":{"kind":"tool","call_id":"c","tool":"bash","input":{"k\u0000":"x"},"output":"a\u0000b","error":false,"duration_ms":1}}"#;
        let AgentMessage::StepReport { step, .. } = parse_frame(frame).unwrap() else { panic!("a step") };
        let json = serde_json::to_string(&step).unwrap();
        assert!(!json.contains("\\u0000") && json.contains("a\u{2400}b") && json.contains("k\u{2400}"), "{json}");
        // Frames without a NUL are parsed as they are.
        assert!(parse_frame(r#"{"type":"heartbeat"}"#).is_ok());
    }

    #[test]
    fn bad_frames_are_logged_a_few_times_then_rarely() {
        let logged: Vec<u64> = (1..=3000).filter(|n| log_bad_frame(*n)).collect();
        assert_eq!(logged, [1, 2, 3, 1000, 2000, 3000]);
    }
}

//! Server-sent events as the Kodel streams send them: blocks of `event:`, `id:` and
//! `data:` lines ended by a blank line; comment lines (heartbeats) are skipped.

/// One event of the stream. Stored events carry an `id`; live ones (agent output) do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub kind: String,
    pub id: Option<i64>,
    pub data: String,
}

/// Gathers a stream's bytes into events (a block may arrive in several chunks).
/// Bytes are kept until a whole block is in, so a character split between two chunks
/// is decoded whole.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&raw);
            let (mut kind, mut data, mut id) = (String::new(), String::new(), None);
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                } else if let Some(i) = line.strip_prefix("id:") {
                    id = i.trim().parse::<i64>().ok();
                }
            }
            if !kind.is_empty() {
                out.push(SseEvent { kind, id, data });
            }
        }
        // A stream that never sends a blank line must not grow without bound.
        if self.buf.len() > 16 * 1024 * 1024 {
            self.buf.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_across_chunks_come_out_whole() {
        let mut p = SseParser::default();
        assert!(p.push(b": heartbeat\n\nevent: task.created\nid: 4").is_empty());
        let evs = p.push(b"2\ndata: {\"a\":1}\n\nevent: job.output\ndata: {}\n\n");
        assert_eq!(evs, vec![
            SseEvent { kind: "task.created".into(), id: Some(42), data: "{\"a\":1}".into() },
            SseEvent { kind: "job.output".into(), id: None, data: "{}".into() },
        ]);
    }

    #[test]
    fn a_character_split_between_chunks_stays_whole() {
        let mut p = SseParser::default();
        let block = "event: job.output\ndata: caf\u{e9} \u{2014} \u{1f680}\n\n".as_bytes();
        let cut = block.iter().position(|b| *b == 0xC3).unwrap() + 1;
        assert!(p.push(&block[..cut]).is_empty());
        let evs = p.push(&block[cut..]);
        assert_eq!(evs[0].data, "caf\u{e9} \u{2014} \u{1f680}");
    }
}

//! Cron specs and time zones of triggers: parsed, and the next times computed, never a panic
//! or an endless search.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (expr, zone) = text.split_once('\n').map_or((text.as_ref(), None), |(e, z)| (e, Some(z)));
    if let Ok(s) = hangar_events::Schedule::parse(expr, zone) {
        let mut at = 1_700_000_000_000i64;
        for _ in 0..3 {
            match s.next_after(at) {
                Some(next) => {
                    assert!(next > at, "the next time is later");
                    at = next;
                }
                None => break,
            }
        }
    }
});

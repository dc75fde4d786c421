//! A handler's result mapped to the function URL's HTTP response (Lambda's rules): a response
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hangar_lambda::url_event::to_response(data);
});

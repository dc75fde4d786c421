//! The JSON bodies of deploys and creates (function, service, sandbox and trigger configs):
//! parsed and validated, an error or a value, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<hangar_api::FunctionConfig>(data) {
        let _ = hangar_api::validate::function_config(&c);
    }
    if let Ok(c) = serde_json::from_slice::<hangar_api::services::ServiceConfig>(data) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_slice::<hangar_api::sandboxes::SandboxConfig>(data) {
        let _ = c.validate();
    }
    if let Ok(c) = serde_json::from_slice::<hangar_api::events::TriggerConfig>(data) {
        let _ = c.validate();
    }
});

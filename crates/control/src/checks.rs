//! What a deploy checks against the workloads already there: an `on_failure` chain and a
//! sequence's steps exist and do not go round in a cycle; a host name routes to one workload.

use hangar_api::RuntimeKind;
use hangar_store::Store;

use crate::ControlError;

/// Refuses an `on_failure` function that does not exist or leads back to `name`.
pub(crate) async fn on_failure(store: &dyn Store, ns: &str, name: &str, target: &str) -> Result<(), ControlError> {
    let mut at = target.to_string();
    let mut chain = vec![name.to_string()];
    loop {
        if chain.contains(&at) {
            chain.push(at);
            return Err(ControlError::refused(
                "invalid_field",
                format!("async.on_failure: failures would go round in a cycle ({}); end the chain at a function without on_failure", chain.join(" → ")),
            ));
        }
        let Some(f) = store.get_function(ns, &at).await? else {
            return Err(ControlError::refused(
                "invalid_field",
                format!("async.on_failure: function `{at}` does not exist in namespace `{ns}`; deploy it first"),
            ));
        };
        chain.push(at);
        match f.config.async_.on_failure {
            Some(next) => at = next,
            None => return Ok(()),
        }
    }
}

/// Refuses steps that do not exist or lead back to the sequence `name` (through nested
/// sequences).
pub(crate) async fn steps(store: &dyn Store, ns: &str, name: &str, steps: &[String]) -> Result<(), ControlError> {
    // Depth-first through nested sequences, with the path that led to each step.
    let mut todo: Vec<(String, Vec<String>)> = steps.iter().rev().map(|s| (s.clone(), vec![name.to_string()])).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some((step, path)) = todo.pop() {
        if step == name {
            return Err(ControlError::refused("invalid_field", format!("steps: the sequence would run itself ({} → {step})", path.join(" → "))));
        }
        let Some(f) = store.get_function(ns, &step).await? else {
            return Err(ControlError::refused("invalid_field", format!("steps: function `{step}` does not exist in namespace `{ns}`; deploy it first")));
        };
        if seen.insert(step.clone()) && f.config.runtime == RuntimeKind::Sequence {
            let mut next = path.clone();
            next.push(step.clone());
            todo.extend(f.config.steps.iter().rev().map(|s| (s.clone(), next.clone())));
        }
    }
    Ok(())
}

/// Refuses host names another function or service (of any namespace) already claims: a host
/// routes to one workload, whichever claimed it first. `me` is the claimant (`fn` or `svc`).
pub(crate) async fn hosts_free(store: &dyn Store, me: (&str, &str, &str), hosts: &[String]) -> Result<(), ControlError> {
    if hosts.is_empty() {
        return Ok(());
    }
    let (kind, ns, name) = me;
    let functions = store.list_functions(None).await?.into_iter().map(|f| ("fn", f.namespace, f.name, f.config.hosts));
    let services = store.list_services(None).await?.into_iter().map(|s| ("svc", s.namespace, s.name, s.config.hosts));
    for (k, n, w, claimed) in functions.chain(services) {
        if (k, n.as_str(), w.as_str()) != (kind, ns, name)
            && let Some(h) = claimed.iter().find(|h| hosts.contains(h))
        {
            return Err(ControlError::Conflict(format!("host `{h}` is already routed to another function or service; choose another host name")));
        }
    }
    Ok(())
}

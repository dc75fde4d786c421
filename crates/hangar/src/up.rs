//! `hangar up`: builds every part of the platform on embedded defaults and serves until signalled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use hangar_api::RuntimeKind;
use hangar_gateway::{AppState, KeyCache, Limits, Shared};
use hangar_meter::{Meter, Metrics};
use hangar_runtime_wasm::{PoolSize, WasmCounters, WasmRuntime};
use hangar_scheduler::Scheduler;
use hangar_store::Store;
use hangar_store_sqlite::SqliteStore;

/// Settings of `hangar up`.
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `postgres://…` for a cluster's store; `None`: the SQLite file in the data dir.
    pub store: Option<String>,
    /// `nats://…` for a cluster's bus; `None`: in-process.
    pub bus: Option<String>,
    pub heartbeat: Duration,
    pub role: hangar_api::nodes::NodeRole,
    /// Where other nodes reach this one (default: the listen address).
    pub advertise: Option<SocketAddr>,
    pub cluster_secret: Option<String>,
    pub max_node_instances: u32,
    pub limits: Limits,
    pub max_log_bytes: usize,
    pub pool_instances: u32,
    /// A manifest to apply once the server is ready.
    pub apply: Option<PathBuf>,
    /// How long an idle process-function instance stays warm.
    pub keep_alive: Duration,
    /// How long an idle process-function instance runs before it is paused (zero: never).
    pub pause_after: Duration,
    /// Prewarmed zygotes kept ready per process runtime.
    pub prewarm: usize,
    /// Period of the services reconcile loop.
    pub reconcile_every: Duration,
    /// Most attempts of asynchronous invocations running at once.
    pub async_concurrency: u32,
    /// How much the queue of asynchronous invocations holds at most.
    pub async_queue: hangar_events::QueueLimits,
    /// Most invocations running at once in one namespace.
    pub namespace_concurrency: u32,
    /// How long hourly usage rows are kept.
    pub usage_retention: Duration,
    /// How long invocation records and their logs are kept.
    pub log_retention: Duration,
    /// How often services and sandboxes are metered.
    pub meter_every: Duration,
    /// Whether usage is metered at all.
    pub metering: bool,
    /// How often adaptive mode looks, and at how much recent traffic.
    pub adapt_every: Duration,
    pub adapt_window: Duration,
    /// `AWS_REGION` as process functions see it.
    pub region: String,
    /// The domain workloads' host names are under.
    pub domain: hangar_gateway::hosts::Domain,
    /// What the trace store keeps; `None`: tracing off.
    pub tracing: Option<hangar_trace::store::Settings>,
    /// The OTLP/HTTP collector kept spans are exported to.
    pub otlp_endpoint: Option<String>,
}

pub async fn run(opts: UpOptions) -> Result<()> {
    // One server per data dir (a second one would clean up, i.e. kill, the first one's
    // containers); its id is the name everything this server makes on the machine carries.
    let data = hangar_core::DataDir::open(&opts.data_dir)?;
    let server_id = data.server_id().clone();
    // Its name among the nodes of a cluster (what holds leases and async events).
    let node_id = data.node_id()?;
    // The store and the bus first: a node that cannot reach them stops here, saying which.
    let store = open_store(&opts).await?;
    let nats = match opts.bus.as_deref() {
        None => None,
        Some(url) if url.starts_with("nats://") => Some(
            hangar_bus_nats::Nats::connect(url, &node_id)
                .await
                .with_context(|| format!("the bus at {} cannot be used (--bus / HANGAR_BUS)", hangar_bus_nats::describe(url)))?,
        ),
        Some(other) => anyhow::bail!("--bus `{}…`: expected nats://HOST:PORT (or no --bus for one node)", other.split("://").next().unwrap_or_default()),
    };
    let secret = match (&nats, opts.cluster_secret.as_deref()) {
        (None, _) => None,
        (Some(_), Some(s)) if s.len() >= 16 => Some(s.to_string()),
        (Some(_), _) => anyhow::bail!(
            "a cluster needs --cluster-secret (or HANGAR_CLUSTER_SECRET): at least 16 characters, the same on every node; nodes call each other with it"
        ),
    };
    let advertise = match opts.advertise {
        Some(a) => a,
        None if !opts.listen.ip().is_unspecified() || nats.is_none() => opts.listen,
        None => anyhow::bail!("--listen {} is a wildcard address: say where other nodes reach this one with --advertise HOST:PORT", opts.listen),
    };
    // A gateway runs no instances: it keeps no prewarmed zygotes, services or sandboxes.
    let runs_instances = opts.role.runs_instances();

    let mut metrics = Metrics::new();
    let counters = WasmCounters::default();
    metrics.register_counter("wasm_compilations", "Components compiled to native code", counters.compilations.clone());
    metrics.register_counter("wasm_cache_loads", "Revisions loaded from the compiled-code cache", counters.cache_loads.clone());
    let otlp_counters = hangar_trace::otlp::ExportCounters::default();
    metrics.register_counter("otlp_spans_exported", "Spans sent to the OTLP collector", otlp_counters.exported.clone());
    metrics.register_counter("otlp_spans_dropped", "Spans not exported: the queue was full or the collector failed", otlp_counters.dropped.clone());
    let otlp_metric_counters = hangar_trace::otlp::ExportCounters::default();
    metrics.register_counter("otlp_metric_points_exported", "Metric points sent to the OTLP collector", otlp_metric_counters.exported.clone());
    metrics.register_counter(
        "otlp_metric_points_dropped",
        "Metric points not exported: the queue was full or the collector failed",
        otlp_metric_counters.dropped.clone(),
    );
    let pool = PoolSize { instances: opts.pool_instances, ..PoolSize::default() };
    let wasm = WasmRuntime::new(opts.data_dir.join("wasm"), pool, counters).context("starting the WebAssembly runtime")?;
    let images = Arc::new(hangar_image::ImageStore::open(&opts.data_dir.join("images")).context("opening the image store")?);
    let prewarm_metrics: Vec<_> = [RuntimeKind::Python3, RuntimeKind::Nodejs, RuntimeKind::Provided]
        .into_iter()
        .map(|kind| {
            let (ready, taken) = metrics.prewarmed_zygotes(kind.as_str());
            (kind, hangar_runtime_process::PoolMetrics { ready, taken })
        })
        .collect();
    let (meter, _writer) = Meter::start(store.clone(), metrics);
    let mut runtimes: Vec<Arc<dyn hangar_runtime::Runtime>> = vec![Arc::new(wasm)];
    let process = hangar_runtime_process::HostConfig {
        data_dir: opts.data_dir.clone(),
        server_id: server_id.clone(),
        keep_alive: opts.keep_alive,
        pause_after: opts.pause_after,
        region: opts.region.clone(),
        prewarm: if runs_instances { opts.prewarm } else { 0 },
        prewarm_metrics,
    };
    match hangar_runtime_process::Host::start(process).await {
        Ok(host) => runtimes.extend(host.runtimes()),
        Err(e) => _ = unavailable("process functions (python3, nodejs, provided)", e),
    }
    let tracer = Arc::new(match opts.tracing.clone() {
        Some(settings) => {
            let export = match &opts.otlp_endpoint {
                Some(url) => Some(hangar_trace::otlp::Exporter::start(url, &node_id, otlp_counters).map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?),
                None => None,
            };
            hangar_trace::Tracer::new(settings, export)
        }
        None => hangar_trace::Tracer::off(),
    });
    // Code deployed through another node is prepared here from the store, at its first call.
    let scheduler = Arc::new(
        Scheduler::new(runtimes, meter.clone(), opts.max_log_bytes, opts.namespace_concurrency)
            .with_code_source(Arc::new(hangar_scheduler::informer::StoredCode(store.clone())))
            .with_tracer(tracer.clone()),
    );
    let services = match hangar_service::Services::check_machine() {
        Ok(()) if !runs_instances => Err(hangar_service::ServiceError::Invalid("this node's role is gateway: it runs no service instances".into())),
        Ok(()) => hangar_service::Services::start(&opts.data_dir, server_id.as_str(), images.clone()).await,
        Err(e) => Err(e),
    };
    let (services, services_unavailable) = match services {
        Ok(s) => {
            s.set_history(meter.history().clone());
            (Some(Arc::new(s)), None)
        }
        Err(e) => (None, Some(unavailable("services", e))),
    };
    let async_queue = hangar_events::AsyncQueue::open(store.clone(), scheduler.clone(), opts.async_concurrency, opts.async_queue, &node_id)
        .await
        .context("reading the queue of asynchronous invocations")?;
    async_queue.set_tracer(tracer.clone());
    let triggers = hangar_events::Triggers::open(store.clone(), async_queue.clone()).await.context("reading the triggers")?;
    let sandboxes = match runs_instances {
        true => hangar_sandbox::Sandboxes::start(&opts.data_dir, &server_id, &node_id, store.clone(), images.clone()).await.map_err(|e| e.to_string()),
        false => Err("this node's role is gateway: it runs no sandboxes".to_string()),
    };
    let (sandboxes, sandboxes_unavailable) = match sandboxes {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(unavailable("sandboxes", e))),
    };
    let (users, sandbox_users) = (services.clone(), sandboxes.clone());
    let image_users: hangar_gateway::ImageUsers = Arc::new(move |ns: &str, id: &str| {
        users.as_ref().is_some_and(|s| s.uses_image(ns, id)) || sandbox_users.as_ref().is_some_and(|s| s.uses_image(ns, id))
    });
    // The change bus: the route, key and trigger tables follow the store through it (and,
    // in a cluster, through nats-server every other node's changes).
    let bus: Arc<dyn hangar_bus::Bus> = match &nats {
        None => hangar_bus::LocalBus::new(),
        Some(n) => hangar_bus_nats::NatsBus::start(n.clone(), &node_id).await.context("listening for other nodes' changes")?,
    };
    let keys = KeyCache::default();
    {
        bus.subscribe(Arc::new(hangar_scheduler::informer::RouteInformer { store: store.clone(), scheduler: scheduler.clone() }));
        bus.subscribe(Arc::new(hangar_gateway::auth::KeyInformer { store: store.clone(), keys: keys.clone() }));
        bus.subscribe(Arc::new(triggers.clone()));
        if let Some(s) = &services {
            bus.subscribe(Arc::new(hangar_service::informer::ServiceInformer::new(store.clone(), s.clone(), images.clone())));
        }
    }
    // The use-cases that change desired state: the store first, then the bus.
    let services_here = match (&services, services_unavailable.clone()) {
        (Some(s), _) => hangar_control::ServicesHere::Running { services: s.clone(), images: images.clone() },
        (None, why) => hangar_control::ServicesHere::Unavailable(why.unwrap_or_default()),
    };
    let sandboxes_here = sandboxes.clone().ok_or_else(|| sandboxes_unavailable.clone().unwrap_or_default());
    // Work that must run once however many nodes run is done under a lease.
    let clock: Arc<dyn hangar_core::Clock> = Arc::new(hangar_core::SystemClock);
    let nats_leases = nats.as_ref().map(|n| hangar_bus_nats::NatsLeases::new(n.clone()));
    let leases: Arc<dyn hangar_bus::Leases> = match &nats_leases {
        None => hangar_bus::LocalLeases::new(clock.clone()),
        Some(l) => l.clone(),
    };
    // Bound now (served once ready) so that the node's first heartbeat says where it is.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}: is another Hangar running? choose another with --listen", opts.listen))?;
    let addr = listener.local_addr()?;
    // What this node reports of itself: capacity, what it runs, where it is reached.
    let report: hangar_bus::nodes::Reporter = {
        let mut fleets: Vec<Arc<dyn hangar_meter::usage::Fleet>> = vec![scheduler.clone()];
        fleets.extend(services.clone().map(|s| s as Arc<dyn hangar_meter::usage::Fleet>));
        let sandboxes = sandboxes.clone();
        let services = services.clone();
        // The address others reach: the bound one when listening on port 0.
        let address = if advertise.port() == 0 || advertise == opts.listen { SocketAddr::new(advertise.ip(), addr.port()) } else { advertise };
        let (address, id, started_ms) = (address.to_string(), node_id.clone(), hangar_core::now_ms());
        let (role, max_instances, scheduler) = (opts.role, opts.max_node_instances, scheduler.clone());
        let (cpu_milli, memory_mb) = hangar_core::machine_capacity();
        Arc::new(move || {
            use hangar_api::nodes::{NodeReport, Resources};
            let (instances, cpu, memory) = hangar_meter::usage::load(&fleets, sandboxes.as_ref().map(|s| s as &dyn hangar_meter::usage::Sandboxes));
            NodeReport {
                id: id.clone(),
                role,
                address: Some(address.clone()),
                capacity: Resources { cpu_milli, memory_mb },
                free: Resources { cpu_milli: cpu_milli.saturating_sub(cpu), memory_mb: memory_mb.saturating_sub(memory) },
                instances,
                max_instances,
                warm: if role.runs_instances() { scheduler.warm_revisions() } else { Vec::new() },
                runs_services: services.is_some(),
                services: services.as_ref().map(|s| s.counts()).unwrap_or_default(),
                draining: false,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_ms,
            }
        })
    };
    let cluster = match (&nats, &nats_leases) {
        (Some(n), Some(l)) => {
            Some(hangar_bus_nats::NatsMembership::join(n.clone(), report.clone(), opts.heartbeat, l.clone()).await.context("joining the cluster")?)
        }
        _ => None,
    };
    if let Some(c) = &cluster {
        // A lost node's queued and running events run here.
        c.on_lost(Arc::new(async_queue.clone()));
        if let Some(s) = &sandboxes {
            c.on_lost(Arc::new(s.clone()));
        }
        // Services run their part of each service's instances here; a fenced node none.
        if let Some(s) = &services {
            let spread = hangar_gateway::cluster::ClusterSpread::new(node_id.clone(), c.clone());
            s.set_spread(spread.clone());
            c.on_lost(spread);
        }
    }
    let members: Arc<dyn hangar_bus::Membership> = match &cluster {
        Some(c) => c.clone(),
        None => hangar_bus::LocalMembership::new(report),
    };
    let peers = secret.map(|s| {
        // The cluster's services, for requests for those this node does not run (yet).
        let directory = hangar_gateway::cluster::ServiceDirectory::new(store.clone());
        bus.subscribe(directory.clone());
        hangar_gateway::cluster::Peers::new(node_id.clone(), s, members.clone(), directory)
    });
    if let Some(p) = &peers {
        // Images deployed through another node are fetched from there.
        images.set_source(Arc::new(hangar_gateway::cluster::PeerImages { peers: p.clone(), max_bytes: opts.limits.max_image_bytes }));
    }
    let control = Arc::new(hangar_control::Control::new(store.clone(), bus, scheduler.clone()).with_services(services_here).with_sandboxes(sandboxes_here));
    let state = AppState::new(Shared {
        store,
        scheduler: scheduler.clone(),
        meter: meter.clone(),
        images,
        image_users,
        services: services.clone(),
        services_unavailable,
        sandboxes: sandboxes.clone(),
        sandboxes_unavailable,
        keys,
        limits: opts.limits,
        control: control.clone(),
        ready: Arc::default(),
        async_queue: async_queue.clone(),
        triggers: triggers.clone(),
        prices_dir: opts.data_dir.join("prices"),
        peers,
        members,
        domain: opts.domain,
        tracer: tracer.clone(),
        log_followers: Default::default(),
    });
    // In a cluster, functions' attempts are placed like calls.
    if let Some(p) = &state.peers {
        async_queue.set_placement(Arc::new(hangar_gateway::cluster::AsyncPlacement(p.clone())));
    }
    // Queued events reach services here, or in a cluster through the node that runs them.
    match (&state.peers, &services) {
        (Some(_), _) => async_queue.set_service_sink(Arc::new(hangar_gateway::cluster::ClusterSink(state.downgrade()))),
        (None, Some(s)) => async_queue.set_service_sink(Arc::new(hangar_service::proxy::EventSink { services: s.clone(), store: state.store.clone() })),
        (None, None) => {}
    }
    // A first start makes the default namespace and an admin key.
    if let Some(secret) = control.bootstrap(|secret| data.write_private("admin.key", secret).map(drop).map_err(|e| e.to_string())).await? {
        println!("Admin API key (shown once; saved to {}):\n  {secret}", data.path().join("admin.key").display());
    }
    // Every table follows the store from here on; services come back in the background (the
    // API answers meanwhile).
    let restored = control.restore().await.context("restoring the deployed workloads")?;
    // Functions are routable again: events accepted before a restart run now, and schedules
    // catch up on times missed while stopped.
    async_queue.run();
    // The control loops, each owned by the part whose state it keeps; the supervisor runs
    // them on their intervals and stops them in order.
    let mut supervisor = hangar_supervisor::Supervisor::new(leases.clone(), node_id.clone());
    {
        use hangar_supervisor::Scope;
        // Schedules fire on one server (the cron lease), each at its time.
        supervisor.run("cron", triggers.cron(leases.clone(), node_id.clone()));
        if let Some(s) = &services {
            // Whatever this server owns but no instance wants is removed.
            supervisor.start("reconcile", opts.reconcile_every, Scope::EachServer, hangar_service::Reconcile(s.clone()));
        }
        if opts.metering {
            // Services, sandboxes and warm function instances are metered by sampling
            // (functions' requests as their records are written).
            let mut fleets: Vec<Arc<dyn hangar_meter::usage::Fleet>> = vec![scheduler.clone()];
            fleets.extend(services.clone().map(|s| s as Arc<dyn hangar_meter::usage::Fleet>));
            let sandboxes = sandboxes.clone().map(|s| Arc::new(s) as Arc<dyn hangar_meter::usage::Sandboxes>);
            let sampler = hangar_meter::usage::Sampler::new(state.store.clone(), clock.clone(), fleets, sandboxes).await;
            supervisor.start("usage", opts.meter_every, Scope::EachServer, sampler);
        }
        // Every workload's metric history takes a point every 10 s.
        let mut sources: Vec<Arc<dyn hangar_meter::history::GaugeSource>> = vec![scheduler.clone(), Arc::new(async_queue.clone())];
        sources.extend(services.clone().map(|s| Arc::new(hangar_service::gauges::ServiceGauges::new(s)) as Arc<dyn hangar_meter::history::GaugeSource>));
        // Each sample also goes to the OTLP collector, if there is one.
        let export = match &opts.otlp_endpoint {
            Some(url) => {
                let exporter =
                    hangar_trace::otlp::MetricsExporter::start(url, &node_id, otlp_metric_counters).map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?;
                Some(Box::new(move |start_s, end_s, sampled: Vec<hangar_meter::history::Sampled>| {
                    let mut points = Vec::new();
                    for s in sampled {
                        for (m, value) in s.values {
                            let name = format!("hangar.{}", m.as_str());
                            points.push(hangar_trace::otlp::MetricPoint { workload: s.workload.clone(), name, unit: m.unit(), value, count: m.is_count() });
                        }
                    }
                    exporter.export(start_s, end_s, points);
                }) as hangar_meter::SampleExport)
            }
            None => None,
        };
        let history = hangar_meter::HistorySampler { history: meter.history().clone(), sources, clock: clock.clone(), export, last_s: None };
        supervisor.start("metric-history", Duration::from_secs(hangar_meter::history::FINE_S), Scope::EachServer, history);
        // Invocation records (and their logs) go after their retention; looked at as often as a
        // tenth of it, at most every minute.
        let records = hangar_meter::RecordPruner { store: state.store.clone(), clock: clock.clone(), retention: opts.log_retention };
        supervisor.start("record-pruning", (opts.log_retention / 10).min(Duration::from_secs(60)), Scope::Once, records);
        supervisor.start(
            "usage-pruning",
            Duration::from_secs(600),
            Scope::Once,
            hangar_meter::usage::Pruner::new(state.store.clone(), clock.clone(), opts.usage_retention),
        );
        // Adaptive mode: functions and services deployed with `mode = "auto"` are warmed and
        // cooled by the advisor.
        let functions = Arc::new(hangar_adapt::fleets::RoutedFunctions { store: state.store.clone(), scheduler: scheduler.clone() });
        let running = services
            .clone()
            .map(|s| Arc::new(hangar_adapt::fleets::RunningServices { store: state.store.clone(), services: s }) as Arc<dyn hangar_adapt::Services>);
        let log = Arc::new(hangar_adapt::fleets::StoredSwitches(state.store.clone()));
        let adapter = hangar_adapt::Adapter::new(functions, running, log, clock.clone(), Some(state.prices_dir.clone()), opts.adapt_window);
        supervisor.start("adapt", opts.adapt_every, Scope::Once, adapter);
    }
    let url = format!("http://{addr}");
    let url_file = opts.data_dir.join("hangar.url");
    // Whole or absent, never half-written, for the CLI and scripts that wait for it.
    let partial = opts.data_dir.join("hangar.url.partial");
    std::fs::write(&partial, &url).and_then(|()| std::fs::rename(&partial, &url_file)).context("writing hangar.url into the data dir")?;
    state.ready.store(true, Ordering::Release);
    println!("Hangar listening on {url} (data dir {}, {restored} function(s) restored)", opts.data_dir.display());
    tracing::info!(%url, "ready");

    if let Some(manifest) = opts.apply.clone() {
        let key = std::fs::read_to_string(data.path().join("admin.key")).ok().map(|s| s.trim().to_string());
        let url = url.clone();
        tokio::spawn(async move {
            if let Err(e) = hangar_cli::apply(url, key, &manifest).await {
                eprintln!("applying {} failed: {e:#}", manifest.display());
            }
        });
    }

    // Calls between services: served on the bridge's address once the bridge exists.
    if let Some(svcs) = &services {
        tokio::spawn(hangar_gateway::serve_internal(state.clone(), svcs.bridge_ready()));
    }
    let app = hangar_gateway::router(state);
    // Small response pieces (head, chunks, end) must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown_signal()).await.context("serving HTTP")?;
    // The CLI finds the server through this file; it must not point at a stopped one.
    let _ = std::fs::remove_file(&url_file);

    // No new requests or attempts; let running invocations end, then make every record durable.
    async_queue.shutdown(Duration::from_secs(30)).await;
    // Every loop ends its round; the meter counts the last seconds of services and sandboxes
    // before they stop.
    supervisor.shutdown().await;
    // Functions, services and sandboxes stop at the same time: a graceful stop takes the
    // longest of them (a service's grace period), not their sum.
    let functions = async {
        let left = scheduler.drain(Duration::from_secs(30)).await;
        if left > 0 {
            tracing::warn!(left, "invocations still running at shutdown");
        }
        scheduler.shutdown().await;
    };
    let services_stop = async {
        if let Some(s) = &services {
            s.shutdown().await;
        }
    };
    // Running sandboxes go to standby: their state survives the restart.
    let sandboxes_stop = async {
        if let Some(s) = &sandboxes {
            s.shutdown().await;
        }
    };
    tokio::join!(functions, services_stop, sandboxes_stop);
    // Every record is durable once the flush returns; the writer task ends with the process
    // (waiting for it to end by itself took 5 s, as parts still hold the meter).
    meter.flush().await;
    if let Some(c) = &cluster {
        c.leave().await;
    }
    println!("Hangar stopped");
    Ok(())
}

/// The store `--store` names: the SQLite file in the data dir by default, or PostgreSQL.
async fn open_store(opts: &UpOptions) -> Result<Arc<dyn Store>> {
    Ok(match opts.store.as_deref() {
        None => {
            let db = opts.data_dir.join("hangar.db");
            Arc::new(SqliteStore::open(&db).with_context(|| format!("opening the database {}", db.display()))?.with_metering(opts.metering))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = hangar_store_postgres::PostgresStore::connect(url)
                .await
                .with_context(|| format!("the store at {} cannot be used (--store / HANGAR_STORE)", hangar_store_postgres::describe(url)))?;
            Arc::new(store.with_metering(opts.metering))
        }
        Some(other) => anyhow::bail!(
            "--store `{}…`: expected postgres://USER:PASS@HOST:PORT/DB (or no --store for the SQLite file in the data dir)",
            other.split("://").next().unwrap_or_default()
        ),
    })
}

/// Says that a part of the platform is not available on this machine, and why; the server
/// runs without it.
fn unavailable(what: &str, why: impl std::fmt::Display) -> String {
    tracing::warn!("{what} are not available: {why}");
    eprintln!("warning: {what} are not available: {why}");
    why.to_string()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

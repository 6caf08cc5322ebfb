//! Choosing a backend: requirements checked against the probe, candidates ranked (an
//! explicit `--backend` first, then the config's preference order, then priority), and
//! the best opened and initialised, falling back to the next on failure. Every plugin
//! found gets a [`PluginReport`] saying why it was or was not chosen.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use corral_backend_api::{ABI_MAJOR, ABI_MINOR};
use serde::Serialize;

use crate::{discovery::Discovered, engine::LoadedPlugin, loader::load, manifest::Manifest};

/// Per-backend options from the host's config: `[backends.NAME]` tables, keyed by a
/// plugin name, `name:variant` or `name-variant`.
pub type BackendOptions = BTreeMap<String, toml::Table>;

/// The key of a `[backends.NAME]` table that is the host's, not the plugin's: where the
/// engine runs (`isolation = "process" | "in-process"`).
pub const ISOLATION_KEY: &str = "isolation";

fn merged_table(manifest: &Manifest, options: &BackendOptions) -> toml::Table {
    let mut table = manifest.options.clone();
    for key in
        [manifest.name.clone(), manifest.id(), format!("{}-{}", manifest.name, manifest.variant)]
    {
        if let Some(t) = options.get(&key) {
            table.extend(t.clone());
        }
    }
    table
}

/// Merges a manifest's default options with the config's `[backends.NAME]` table (the
/// config wins) and renders them as JSON for init; the host's own keys
/// ([`ISOLATION_KEY`]) are left out.
pub fn merged_options(manifest: &Manifest, options: &BackendOptions) -> String {
    let mut table = merged_table(manifest, options);
    table.remove(ISOLATION_KEY);
    serde_json::to_string(&table).unwrap_or_else(|_| "{}".into())
}

/// Where a plugin's engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In a worker process per loaded model: a crash ends only that worker.
    Process,
    /// In the host process: the last percent of speed, and a crash ends the host.
    InProcess,
}

impl Isolation {
    /// `process` or `in-process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::InProcess => "in-process",
        }
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "process" => Ok(Isolation::Process),
            "in-process" | "inprocess" | "none" => Ok(Isolation::InProcess),
            other => Err(format!("isolation {other:?}: use \"process\" or \"in-process\"")),
        }
    }
}

/// Every plugin manifest found on the search path, the machine they are matched
/// against, and the plugins opened so far. A plugin is opened and initialised at most
/// once per catalog (per process): later choices that pick it again reuse it.
pub struct PluginCatalog {
    /// The plugin search path.
    pub search_path: Vec<PathBuf>,
    /// Every manifest found on it.
    pub discovered: Vec<Discovered>,
    /// The machine.
    pub machine: corral_probe::MachineInfo,
    /// Options for the plugins' init.
    pub options: BackendOptions,
    /// Where engines run unless a plugin's `[backends.NAME] isolation` says otherwise.
    pub isolation: Isolation,
    /// How to start a worker process (needed for [`Isolation::Process`]).
    pub worker: Option<crate::worker::WorkerCommand>,
    /// How to check a library in a worker process without loading it here
    /// ([`PluginCatalog::verify`]).
    pub inspector: Option<crate::inspect::Inspector>,
    opened: Mutex<HashMap<PathBuf, Arc<LoadedPlugin>>>,
    /// Plugins that failed to open, when and why: not tried again for
    /// [`RETRY_FAILED_AFTER`].
    failed: Mutex<HashMap<PathBuf, (std::time::Instant, String)>>,
}

/// How long a plugin that failed to open is answered with that failure before it is
/// tried again.
pub const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl PluginCatalog {
    /// A catalog of the manifests on `search_path`.
    pub fn new(
        search_path: Vec<PathBuf>,
        machine: corral_probe::MachineInfo,
        options: BackendOptions,
    ) -> PluginCatalog {
        let discovered = crate::discovery::discover(&search_path);
        tracing::debug!(?search_path, found = discovered.len(), "plugin discovery");
        PluginCatalog {
            search_path,
            discovered,
            machine,
            options,
            isolation: Isolation::InProcess,
            worker: None,
            inspector: None,
            opened: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// Runs engines with `isolation` by default, starting workers with `worker`.
    pub fn set_isolation(
        &mut self,
        isolation: Isolation,
        worker: Option<crate::worker::WorkerCommand>,
    ) {
        self.isolation = isolation;
        self.worker = worker;
    }

    /// Where `manifest`'s engine runs: its `[backends.NAME] isolation`, else the default.
    /// Process isolation needs a worker command; without one it is in-process.
    pub fn isolation_for(
        &self,
        manifest: &Manifest,
    ) -> Result<Isolation, crate::loader::LoadError> {
        let table = merged_table(manifest, &self.options);
        let asked = match table.get(ISOLATION_KEY) {
            Some(toml::Value::String(s)) => s.parse().map_err(|detail: String| {
                crate::loader::LoadError::Init { plugin: manifest.id(), detail }
            })?,
            Some(other) => {
                return Err(crate::loader::LoadError::Init {
                    plugin: manifest.id(),
                    detail: format!("isolation must be a string, got {other}"),
                });
            }
            None => self.isolation,
        };
        Ok(if self.worker.is_some() { asked } else { Isolation::InProcess })
    }

    /// Opens and initialises the plugin of `manifest` the way its isolation says: in
    /// this process, or in a worker process that checks it and ends (models then get
    /// workers of their own).
    fn open(&self, m: &Manifest, path: &Path) -> Result<LoadedPlugin, crate::loader::LoadError> {
        match (self.isolation_for(m)?, &self.worker) {
            (Isolation::Process, Some(cmd)) => {
                let options = merged_options(m, &self.options);
                let backend = crate::worker::WorkerBackend::start(
                    cmd.clone(),
                    path.to_path_buf(),
                    options,
                    m.id(),
                )
                .map_err(|e| crate::loader::LoadError::Worker {
                    plugin: m.id(),
                    detail: e.message().to_string(),
                })?;
                let library = path.parent().unwrap_or(Path::new(".")).join(&m.library);
                Ok(LoadedPlugin {
                    manifest: m.clone(),
                    manifest_path: path.to_path_buf(),
                    library_path: library,
                    version: backend.version().to_string(),
                    abi_minor: None,
                    backend: Arc::new(backend),
                })
            }
            _ => load(m, path, merged_options(m, &self.options)),
        }
    }

    /// Opens every plugin that could run here (in a worker where isolation says so),
    /// not just the best: `corral backends --check`. Those that fail are reported
    /// unavailable with the reason.
    pub fn check_all(&self, selector: &Selector) -> Result<Choice, ChoiceError> {
        let mut choice = self.choose(selector)?;
        for r in choice.reports.iter_mut().filter(|r| r.status == Status::Available) {
            let Some(d) = self.discovered.iter().find(|d| d.manifest_path == r.manifest) else {
                continue;
            };
            let Ok(m) = d.manifest.as_ref() else { continue };
            match self.open(m, &d.manifest_path) {
                Ok(p) => {
                    r.reason = format!("{} (checked: it loads)", r.reason);
                    r.engine = p.backend.describe();
                }
                Err(e) => {
                    r.status = Status::Unavailable;
                    r.reason = e.to_string();
                }
            }
        }
        Ok(choice)
    }

    /// Makes a choice's listing honest about libraries it did not load: every plugin
    /// reported available is opened (not initialised) in a worker process of its own
    /// ([`crate::inspect`]), and one whose library cannot be loaded (not a shared
    /// library, a dependency missing, another ABI, not a corral plugin, it crashes) is
    /// reported unavailable with the reason. A manifest whose `abi` disagrees with its
    /// library's header gets a note, the chosen plugin's too. Without an inspector it
    /// changes nothing.
    pub fn verify(&self, choice: &mut Choice) {
        let Some(inspector) = &self.inspector else { return };
        let idx: Vec<usize> = choice
            .reports
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status != Status::Unavailable)
            .map(|(i, _)| i)
            .collect();
        let manifests: Vec<PathBuf> =
            idx.iter().map(|&i| choice.reports[i].manifest.clone()).collect();
        for (i, result) in idx.into_iter().zip(inspector.inspect_all(&manifests)) {
            let r = &mut choice.reports[i];
            match result {
                Ok(inspection) => {
                    if let Some(note) = inspection.abi_note {
                        r.reason = format!("{}; note: {note}", r.reason);
                    }
                }
                // The chosen plugin loaded already: a failed inspection changes nothing.
                Err(e) if r.status == Status::Available => {
                    r.status = Status::Unavailable;
                    r.reason = e;
                }
                Err(e) => tracing::debug!("inspection of the chosen {} failed: {e}", r.name),
            }
        }
    }

    /// Whether some manifest declares `format` (e.g. the example plugin's `toy`).
    pub fn declares_format(&self, format: &str) -> bool {
        self.discovered
            .iter()
            .any(|d| d.manifest.as_ref().is_ok_and(|m| m.formats.iter().any(|f| f == format)))
    }

    /// Checks requirements, ranks, and opens the best plugin that loads (reusing one
    /// opened before); see [`choose`].
    pub fn choose(&self, selector: &Selector) -> Result<Choice, ChoiceError> {
        let mut choice = choose_with(&self.discovered, &self.machine, selector, &mut |m, path| {
            let mut opened = self.opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(p) = opened.get(path) {
                return Ok(p.clone());
            }
            // A plugin that failed to open is not tried again for a minute (one whose init
            // hung cost the timeout at startup and again at the first request); after that
            // it is, as a cause may pass (a GPU driver not up yet at boot).
            if let Some((when, why)) =
                self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(path)
                && when.elapsed() < RETRY_FAILED_AFTER
            {
                return Err(crate::loader::LoadError::FailedBefore(why.clone()));
            }
            match self.open(m, path) {
                Ok(p) => {
                    let p = Arc::new(p);
                    opened.insert(path.to_path_buf(), p.clone());
                    Ok(p)
                }
                Err(e) => {
                    self.failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(path.to_path_buf(), (std::time::Instant::now(), e.to_string()));
                    Err(e)
                }
            }
        })?;
        for r in &mut choice.reports {
            let manifest = self
                .discovered
                .iter()
                .find(|d| d.manifest_path == r.manifest)
                .and_then(|d| d.manifest.as_ref().ok());
            if let Some(Ok(i)) = manifest.map(|m| self.isolation_for(m)) {
                r.isolation = i.as_str().to_string();
            }
        }
        Ok(choice)
    }

    /// Like [`PluginCatalog::choose`], but an error naming every plugin and why it could
    /// not serve when none can.
    pub fn choose_one(
        &self,
        selector: &Selector,
    ) -> Result<(Arc<LoadedPlugin>, Choice), NoBackend> {
        let choice = self.choose(selector)?;
        match &choice.chosen {
            Some(p) => Ok((p.clone(), choice)),
            None => {
                let mut msg = String::from("no backend could be loaded");
                if let Some(f) = &selector.format {
                    msg.push_str(&format!(" for {f} models"));
                }
                if choice.reports.is_empty() {
                    msg.push_str(&format!(
                        ": no plugin manifests found on the plugin path ({})",
                        self.search_path
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":")
                    ));
                }
                for r in &choice.reports {
                    msg.push_str(&format!("\n  {}:{}: {}", r.name, r.variant, r.reason));
                }
                Err(NoBackend::None(msg))
            }
        }
    }
}

/// No backend can serve a choice.
#[derive(Debug, thiserror::Error)]
pub enum NoBackend {
    /// The selector itself is wrong (an unknown `--backend`).
    #[error(transparent)]
    Choice(#[from] ChoiceError),
    /// Every candidate was unavailable or failed to load; the message lists them.
    #[error("{0}")]
    None(String),
}

/// Status of one plugin in a choice.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Opened, initialised and chosen.
    Chosen,
    /// Could run here but another was chosen (not opened).
    Available,
    /// Cannot run here; `reason` says why.
    Unavailable,
}

/// One line of `corral backends`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReport {
    /// Backend name (or the manifest file when it does not parse).
    pub name: String,
    /// Variant.
    pub variant: String,
    /// Plugin version.
    pub version: String,
    /// ABI from the manifest.
    pub abi: String,
    /// Model formats.
    pub formats: Vec<String>,
    /// Priority.
    pub priority: i32,
    /// The manifest file.
    pub manifest: PathBuf,
    /// Chosen, available or unavailable.
    pub status: Status,
    /// Why it has that status.
    pub reason: String,
    /// Devices, for the chosen plugin.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// The engine's self-description, for the chosen plugin.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub engine: String,
    /// Where its engine runs (`process` or `in-process`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub isolation: String,
}

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// `None` or `auto`: automatic; otherwise a name, variant or `name:variant`.
    pub backend: Option<String>,
    /// Preference order from the config.
    pub preference: Vec<String>,
    /// Model format that must be supported (`gguf`, ...), if any.
    pub format: Option<String>,
    /// Plugins (by manifest path) already tried for the model at hand and found unable to
    /// run it, each with the reason: they rank nowhere and are reported with it.
    pub passed_over: Vec<(PathBuf, String)>,
}

impl Selector {
    /// The backend asked for by name (`--backend`, the config's `backend`), if any:
    /// `None` when the choice is automatic (no name, or `auto`).
    pub fn explicit(&self) -> Option<&str> {
        self.backend.as_deref().map(str::trim).filter(|b| !b.is_empty() && *b != "auto")
    }
}

/// A choice that cannot be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// `--backend` names nothing installed.
    #[error("no installed backend is called {asked:?}; installed: {installed}")]
    UnknownBackend {
        /// What was asked.
        asked: String,
        /// What is installed, or a hint when nothing is.
        installed: String,
    },
}

/// The outcome of a choice.
pub struct Choice {
    /// The plugin that was loaded, if any could be.
    pub chosen: Option<Arc<LoadedPlugin>>,
    /// Every plugin found, with its status and reason.
    pub reports: Vec<PluginReport>,
}

/// Checks every manifest's requirements against `machine`, ranks the candidates (an
/// explicit choice first, then the preference order, then priority, then the id) and
/// opens them best first until one initialises. An unknown explicit choice is an
/// error; a known one that cannot run falls back to the next candidate with a warning.
pub fn choose(
    discovered: &[Discovered],
    machine: &corral_probe::MachineInfo,
    selector: &Selector,
    options: &BackendOptions,
) -> Result<Choice, ChoiceError> {
    choose_with(discovered, machine, selector, &mut |m, path| {
        load(m, path, merged_options(m, options)).map(Arc::new)
    })
}

/// The step of a choice that opens one plugin.
type OpenPlugin<'a> =
    dyn FnMut(&Manifest, &Path) -> Result<Arc<LoadedPlugin>, crate::loader::LoadError> + 'a;

/// [`choose`] with the step that opens a plugin given by the caller.
fn choose_with(
    discovered: &[Discovered],
    machine: &corral_probe::MachineInfo,
    selector: &Selector,
    open: &mut OpenPlugin<'_>,
) -> Result<Choice, ChoiceError> {
    let explicit = selector.explicit();
    if let Some(asked) = explicit {
        let any = discovered.iter().any(|d| d.manifest.as_ref().is_ok_and(|m| m.matches(asked)));
        if !any {
            let mut names: Vec<String> = discovered
                .iter()
                .filter_map(|d| d.manifest.as_ref().ok().map(Manifest::id))
                .collect();
            names.dedup();
            let installed = if names.is_empty() {
                "none (no plugin manifests on the plugin path; see `corral backends`)".to_string()
            } else {
                names.join(", ")
            };
            return Err(ChoiceError::UnknownBackend { asked: asked.to_string(), installed });
        }
    }

    let mut reports = Vec::new();
    let mut candidates: Vec<(usize, &Manifest, &Path)> = Vec::new();
    for d in discovered {
        let m = match &d.manifest {
            Ok(m) => m,
            Err(e) => {
                reports.push(PluginReport {
                    name: d.manifest_path.display().to_string(),
                    variant: String::new(),
                    version: String::new(),
                    abi: String::new(),
                    formats: Vec::new(),
                    priority: 0,
                    manifest: d.manifest_path.clone(),
                    status: Status::Unavailable,
                    reason: e.to_string(),
                    devices: Vec::new(),
                    engine: String::new(),
                    isolation: String::new(),
                });
                continue;
            }
        };
        let idx = reports.len();
        let mut report = PluginReport {
            name: m.name.clone(),
            variant: m.variant.clone(),
            version: m.version.clone(),
            abi: m.abi.clone(),
            formats: m.formats.clone(),
            priority: m.priority,
            manifest: d.manifest_path.clone(),
            status: Status::Available,
            reason: String::new(),
            devices: Vec::new(),
            engine: String::new(),
            isolation: String::new(),
        };
        let mut unmet = Vec::new();
        match m.abi_version() {
            Ok((major, _)) if major == ABI_MAJOR => {}
            _ => unmet.push(format!(
                "built for ABI {} but this host speaks ABI {ABI_MAJOR}.{ABI_MINOR}",
                m.abi
            )),
        }
        if let Err(u) = corral_probe::check(&m.requires, machine) {
            unmet.push(u.to_string());
        }
        if let Some(f) = &selector.format
            && !m.formats.iter().any(|x| x == f)
        {
            unmet.push(format!("does not run {f} models (runs {})", m.formats.join(", ")));
        }
        if let Some(lib) = d.library_path()
            && !lib.is_file()
        {
            unmet.push(format!("library {} does not exist", lib.display()));
        }
        if let Some((_, why)) = selector.passed_over.iter().find(|(p, _)| *p == d.manifest_path) {
            unmet.push(format!("cannot run this model: {why}"));
        }
        if unmet.is_empty() {
            candidates.push((idx, m, &d.manifest_path));
        } else {
            report.status = Status::Unavailable;
            report.reason = unmet.join("; ");
        }
        reports.push(report);
    }

    // Rank: the explicit choice first, then the config's preference order, then priority.
    let pref_rank =
        |m: &Manifest| selector.preference.iter().position(|p| m.matches(p)).unwrap_or(usize::MAX);
    candidates.sort_by(|a, b| {
        let ea = explicit.is_some_and(|x| a.1.matches(x));
        let eb = explicit.is_some_and(|x| b.1.matches(x));
        eb.cmp(&ea)
            .then(pref_rank(a.1).cmp(&pref_rank(b.1)))
            .then(b.1.priority.cmp(&a.1.priority))
            .then(a.1.id().cmp(&b.1.id()))
    });
    if let Some(asked) = explicit
        && !candidates.first().is_some_and(|c| c.1.matches(asked))
    {
        let why: Vec<String> = reports
            .iter()
            .filter(|r| r.status == Status::Unavailable && !r.reason.is_empty())
            .filter(|r| {
                discovered.iter().any(|d| {
                    d.manifest_path == r.manifest
                        && d.manifest.as_ref().is_ok_and(|m| m.matches(asked))
                })
            })
            .map(|r| format!("{}:{}: {}", r.name, r.variant, r.reason))
            .collect();
        tracing::warn!(
            "backend {asked:?} cannot run here ({}); falling back to the next candidate",
            why.join("; ")
        );
    }

    let mut chosen = None;
    for (idx, m, path) in candidates {
        if chosen.is_some() {
            reports[idx].reason = match explicit {
                Some(x) if !m.matches(x) => format!("not selected (--backend {x})"),
                _ => "can run here; another backend ranks higher".to_string(),
            };
            continue;
        }
        match open(m, path) {
            Ok(p) => {
                let r = &mut reports[idx];
                r.status = Status::Chosen;
                r.reason = why_chosen(m, selector, explicit);
                r.devices =
                    p.devices().iter().map(|d| format!("{} ({:?})", d.name, d.kind)).collect();
                r.engine = p.backend.describe();
                tracing::info!("chose backend {}: {}", m.id(), r.reason);
                chosen = Some(p);
            }
            Err(e) => {
                tracing::warn!("backend {} skipped: {e}", m.id());
                reports[idx].status = Status::Unavailable;
                reports[idx].reason = e.to_string();
            }
        }
    }
    Ok(Choice { chosen, reports })
}

fn why_chosen(m: &Manifest, selector: &Selector, explicit: Option<&str>) -> String {
    if let Some(x) = explicit
        && m.matches(x)
    {
        return format!("asked for with backend = {x:?}");
    }
    if let Some(p) = selector.preference.iter().find(|p| m.matches(p)) {
        return format!("first loadable backend in the config's preference order ({p})");
    }
    let base = format!("highest priority ({}) among the backends that can run here", m.priority);
    match explicit {
        Some(x) => format!("{base}; {x:?} could not run"),
        None => base,
    }
}

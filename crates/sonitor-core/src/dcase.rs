//! The DCASE 2022/2023 Task 2 data layout.
//!
//! ```text
//! ROOT/<machine_type>/train/section_SS_{source|target}_train_normal_NNNN_<attributes>.wav
//! ROOT/<machine_type>/test/section_SS_{source|target}_test_{normal|anomaly}_NNNN_<attributes>.wav
//! ROOT/<machine_type>/attributes_SS.csv           file_name,d1p,d1v,d2p,d2v,...
//! ```
//!
//! Evaluation-set test files carry no labels (`section_SS_NNNN.wav`); they parse with `domain` and `condition`
//! unknown. This module also reads and writes DCASE submission files
//! (`anomaly_score_<type>_section_SS_test.csv`, rows `file_name,score`) and builds the auxiliary class labels
//! the training task uses, at the granularities the seed paper compares ([`LabelGranularity`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DcaseError {
    #[error("{path}: data directory not found")]
    MissingDir { path: PathBuf },
    #[error("{path}: not a directory: give the data set's root directory (the one that holds <type>/train and <type>/test)")]
    NotADir { path: PathBuf },
    // The cause is in the message and not a `source()`, or `{:#}` (anyhow) would print it twice.
    #[error("{path}: cannot read: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `hint`: where the machine types are when the folder given is one level off ([`one_level_off`]), else what
    /// to do with raw recordings.
    #[error("{path}: no machine type directories (<type>/train or <type>/test) found; {hint}")]
    Empty { path: PathBuf, hint: String },
    #[error("{path}: a split directory is named train/ or test/, in lower case: rename it (its clips were not read)")]
    SplitCase { path: PathBuf },
    #[error("{path}: scores directory not found (where `eval --out` or `baseline --out` wrote the submission files)")]
    MissingScores { path: PathBuf },
    #[error("{path}: not a regular file (a FIFO or a device)")]
    NotAFile { path: PathBuf },
    #[error("{path}: cannot write: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: file name is not DCASE-shaped ({reason}); expected section_SS_<source|target>_<train|test>_<normal|anomaly>_NNNN[_attributes].wav, or make such clips from raw recordings with `sonitor-train import`")]
    BadName { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadCsv { path: PathBuf, reason: String },
    #[error("{path}: the directory's name is not usable as a machine type ({reason}); rename it")]
    BadTypeName { path: PathBuf, reason: &'static str },
    #[error(
        "{path}: written by an interrupted run (its \"complete\" is false): some of its clips are missing; run the \
         command that made it again (`sonitor-train synth` replaces it whole)"
    )]
    Unfinished { path: PathBuf },
    #[error("{path}: file is in {dir}/ but its name says {split}")]
    WrongSplit {
        path: PathBuf,
        dir: &'static str,
        split: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Source,
    Target,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Source => "source",
            Domain::Target => "target",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Normal,
    Anomaly,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Normal => "normal",
            Condition::Anomaly => "anomaly",
        }
    }
}

/// What a DCASE file name says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipName {
    pub section: u16,
    /// `None` for evaluation-set names (`section_SS_NNNN.wav`).
    pub domain: Option<Domain>,
    pub split: Option<Split>,
    pub condition: Option<Condition>,
    pub index: u32,
    /// The attribute part of the name (after the index), without `.wav`; empty when absent.
    pub attributes: String,
}

impl ClipName {
    /// Formats a development-set name.
    pub fn format(
        section: u16,
        domain: Domain,
        split: Split,
        condition: Condition,
        index: u32,
        attributes: &str,
    ) -> String {
        let attrs = if attributes.is_empty() {
            String::new()
        } else {
            format!("_{attributes}")
        };
        format!(
            "section_{section:02}_{}_{}_{}_{index:04}{attrs}.wav",
            domain.as_str(),
            split.as_str(),
            condition.as_str()
        )
    }

    /// Parses a file name (not a path).
    pub fn parse(name: &str) -> Result<ClipName, String> {
        // Any case, as the directory scan takes it (`.wav`, `.WAV`, `.Wav`).
        let stem = name
            .len()
            .checked_sub(4)
            .filter(|&i| name.is_char_boundary(i) && name[i..].eq_ignore_ascii_case(".wav"))
            .map(|i| &name[..i])
            .ok_or("does not end in .wav")?;
        let parts: Vec<&str> = stem.split('_').collect();
        if parts.len() < 3 || parts[0] != "section" {
            return Err("does not start with section_SS_".into());
        }
        let section = parse_num(parts[1], "section")?;
        let section = u16::try_from(section).map_err(|_| "section number too large".to_string())?;
        // Evaluation-set name: section_SS_NNNN.wav
        if parts.len() == 3 {
            return Ok(ClipName {
                section,
                domain: None,
                split: None,
                condition: None,
                index: parse_num(parts[2], "index")?,
                attributes: String::new(),
            });
        }
        if parts.len() < 6 {
            return Err("too few fields".into());
        }
        let domain = match parts[2] {
            "source" => Domain::Source,
            "target" => Domain::Target,
            other => return Err(format!("domain '{other}' is neither source nor target")),
        };
        let split = match parts[3] {
            "train" => Split::Train,
            "test" => Split::Test,
            other => return Err(format!("split '{other}' is neither train nor test")),
        };
        let condition = match parts[4] {
            "normal" => Condition::Normal,
            "anomaly" => Condition::Anomaly,
            other => return Err(format!("condition '{other}' is neither normal nor anomaly")),
        };
        Ok(ClipName {
            section,
            domain: Some(domain),
            split: Some(split),
            condition: Some(condition),
            index: parse_num(parts[5], "index")?,
            attributes: parts[6..].join("_"),
        })
    }
}

fn parse_num(s: &str, what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{s}' is not a number"));
    }
    s.parse()
        .map_err(|_| format!("{what} '{s}' is out of range"))
}

/// One audio clip of a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    pub path: PathBuf,
    pub machine_type: String,
    /// The split given by the directory the file is in.
    pub split: Split,
    pub name: ClipName,
    /// Attribute (parameter, value) pairs from `attributes_SS.csv` when the file is listed there.
    pub attribute_values: Vec<(String, String)>,
}

impl Clip {
    pub fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    }

    pub fn is_anomaly(&self) -> Option<bool> {
        self.name.condition.map(|c| c == Condition::Anomaly)
    }

    /// The attribute string used for class labels: the CSV's `p1_v1_p2_v2…` when listed, else the name's.
    pub fn attribute_key(&self) -> String {
        if self.attribute_values.is_empty() {
            self.name.attributes.clone()
        } else {
            self.attribute_values
                .iter()
                .map(|(p, v)| format!("{p}_{v}"))
                .collect::<Vec<_>>()
                .join("_")
        }
    }
}

/// A scanned data set: every clip of every machine type.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub root: PathBuf,
    pub clips: Vec<Clip>,
    /// For each machine type with `attributes_SS.csv` files, the file names they list (whether or not a clip of
    /// the data set has that name).
    pub attribute_rows: BTreeMap<String, BTreeSet<String>>,
}

impl Dataset {
    pub fn machine_types(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.clips.iter().map(|c| c.machine_type.as_str()).collect();
        set.into_iter().map(String::from).collect()
    }

    /// (machine type, section) pairs in sorted order.
    pub fn sections(&self) -> Vec<(String, u16)> {
        let set: BTreeSet<(&str, u16)> = self
            .clips
            .iter()
            .map(|c| (c.machine_type.as_str(), c.name.section))
            .collect();
        set.into_iter().map(|(t, s)| (t.to_string(), s)).collect()
    }

    /// The sections (of [`Dataset::sections`]) with no clip in `split`: e.g. a machine type whose `train`
    /// directory is empty, which a model trained on this data set cannot have a model for.
    pub fn sections_without(&self, split: Split) -> Vec<(String, u16)> {
        self.sections()
            .into_iter()
            .filter(|(t, s)| self.clips_of(t, *s, split).next().is_none())
            .collect()
    }

    pub fn clips_of<'a>(
        &'a self,
        machine_type: &'a str,
        section: u16,
        split: Split,
    ) -> impl Iterator<Item = &'a Clip> + 'a {
        self.clips.iter().filter(move |c| {
            c.machine_type == machine_type && c.name.section == section && c.split == split
        })
    }
}

/// Refuses a data set whose writer says it did not finish: `sonitor-train synth` writes `"complete": false` in its
/// `synth.json` until its last clip is written. A stopped run left some types or splits and no ground truth, which
/// `fit` trained on without a word, and `import` added clips to (which the next `synth` deleted).
pub fn check_finished(root: &Path) -> Result<(), DcaseError> {
    let manifest = root.join("synth.json");
    let text = match crate::regular_file::read(&manifest) {
        Err(e) if crate::regular_file::is_not_a_file(&e) => {
            return Err(DcaseError::NotAFile { path: manifest })
        }
        read => read.ok(),
    };
    if let Some(text) = text {
        let complete = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("complete").and_then(|c| c.as_bool()));
        if complete == Some(false) {
            return Err(DcaseError::Unfinished { path: manifest });
        }
    }
    Ok(())
}

/// Scans a data set root. Non-WAV files are ignored; a WAV whose name is not DCASE-shaped is an error.
pub fn scan(root: &Path) -> Result<Dataset, DcaseError> {
    if !root.is_dir() {
        let path = root.to_path_buf();
        return Err(if root.exists() {
            DcaseError::NotADir { path }
        } else {
            DcaseError::MissingDir { path }
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DcaseError::Io { path, error }
    };
    check_finished(root)?;
    let mut types = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let p = entry.map_err(io(root))?.path();
        if is_type_dir(&p)? {
            types.push(p);
        }
    }
    types.sort();
    if types.is_empty() {
        return Err(DcaseError::Empty {
            path: root.to_path_buf(),
            hint: one_level_off(root),
        });
    }
    let mut clips = Vec::new();
    let mut attribute_rows = BTreeMap::new();
    for type_dir in types {
        let machine_type = match type_dir.file_name().and_then(|n| n.to_str()) {
            None => Err("not UTF-8"),
            Some(n) => machine_type_problem(n).map_or(Ok(n.to_string()), Err),
        }
        .map_err(|reason| DcaseError::BadTypeName {
            path: type_dir.clone(),
            reason,
        })?;
        let attributes = read_attribute_csvs(&type_dir)?;
        if !attributes.is_empty() {
            attribute_rows.insert(machine_type.clone(), attributes.keys().cloned().collect());
        }
        for (dir, split) in [("train", Split::Train), ("test", Split::Test)] {
            let d = type_dir.join(dir);
            if !d.is_dir() {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
                .map_err(io(&d))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| e.eq_ignore_ascii_case("wav"))
                })
                .collect();
            files.sort();
            for path in files {
                // A FIFO named like a clip blocked the whole run on its first read, a device (`/dev/zero`
                // linked in) read as an empty file.
                if std::fs::metadata(&path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
                    return Err(DcaseError::NotAFile { path });
                }
                let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                    return Err(DcaseError::BadName {
                        path,
                        reason: "not UTF-8".into(),
                    });
                };
                let name = ClipName::parse(file_name).map_err(|reason| DcaseError::BadName {
                    path: path.clone(),
                    reason,
                })?;
                if let Some(s) = name.split {
                    if s != split {
                        return Err(DcaseError::WrongSplit {
                            path,
                            dir,
                            split: s.as_str(),
                        });
                    }
                }
                let attribute_values = attributes.get(file_name).cloned().unwrap_or_default();
                clips.push(Clip {
                    path,
                    machine_type: machine_type.clone(),
                    split,
                    name,
                    attribute_values,
                });
            }
        }
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        clips,
        attribute_rows,
    })
}

/// What to say of a data set root `root` in which no machine type was found: that it is itself a machine type's
/// folder (it has `train/` or `test/`: its parent is the root), or that the machine types are in one of its
/// folders (DCASE's `dev_data/` holds `raw/`, which holds the types); else, for raw recordings, `import`. Both
/// slips said only "no machine type directories" (review25).
fn one_level_off(root: &Path) -> String {
    let shown = |p: &Path| p.display().to_string();
    if is_type_dir(root).unwrap_or(false) {
        let parent = std::path::absolute(root)
            .ok()
            .and_then(|a| a.parent().map(Path::to_path_buf));
        return format!(
            "it is itself a machine type's folder (it has train/ or test/): give the folder that holds it{}",
            parent.map_or(String::new(), |p| format!(", {}", shown(&p)))
        );
    }
    let mut below: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| is_type_dir(&e.path()).unwrap_or(false))
        })
        .collect();
    below.sort();
    match below.first() {
        Some(p) => format!("the machine types are one level down: give {}", shown(p)),
        None => "for a folder of raw recordings, run `sonitor-train import` first".into(),
    }
}

/// Whether `dir` (an entry of a data set's root) is a machine type's directory: it has `train/` or `test/`. One
/// that cannot be read, or that has them in another case (`Train/`), is an error: it was skipped without a word,
/// and a whole machine type went missing from the training.
fn is_type_dir(dir: &Path) -> Result<bool, DcaseError> {
    // A file system's `lost+found` (unreadable but to root when the data set is a disk of its own) and hidden
    // directories are no machine types.
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !dir.is_dir() || name == "lost+found" || name.starts_with('.') {
        return Ok(false);
    }
    let io = |path: PathBuf| move |error| DcaseError::Io { path, error };
    let mut found = false;
    for e in std::fs::read_dir(dir)
        .map_err(io(dir.to_path_buf()))?
        .flatten()
    {
        let name = e.file_name();
        let lower = name.to_string_lossy().to_ascii_lowercase();
        if lower != "train" && lower != "test" {
            continue;
        }
        let path = e.path();
        if !std::fs::metadata(&path).map_err(io(path.clone()))?.is_dir() {
            continue;
        }
        if name != "train" && name != "test" {
            return Err(DcaseError::SplitCase { path });
        }
        found = true;
    }
    Ok(found)
}

/// Reads every `attributes_SS.csv` of a machine type directory: file name (without directories) → pairs.
pub fn read_attribute_csvs(
    type_dir: &Path,
) -> Result<HashMap<String, Vec<(String, String)>>, DcaseError> {
    let mut map = HashMap::new();
    let Ok(entries) = std::fs::read_dir(type_dir) else {
        return Ok(map);
    };
    let mut csvs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("attributes_") && n.ends_with(".csv"))
        })
        .collect();
    csvs.sort();
    for csv_path in csvs {
        // A FIFO named like the CSV blocked the scan for ever.
        if std::fs::metadata(&csv_path).is_ok_and(|m| !m.is_file()) {
            return Err(DcaseError::NotAFile { path: csv_path });
        }
        let bad = |reason: String| DcaseError::BadCsv {
            path: csv_path.clone(),
            reason,
        };
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_path(&csv_path)
            .map_err(|e| bad(e.to_string()))?;
        // The header names the file column first. A CSV saved with another separator (a spreadsheet with a
        // European locale writes `file_name;d1p;d1v`) read as one column: every row was ignored without a word.
        let first = rdr
            .headers()
            .map_err(|e| bad(e.to_string()))?
            .get(0)
            .unwrap_or_default()
            .trim()
            .trim_start_matches('\u{feff}')
            .to_string();
        if first != "file_name" {
            let other = [';', '\t', '|'].into_iter().find(|c| first.contains(*c));
            return Err(bad(match other {
                Some(c) => format!(
                    "its header `{}` is one field: its fields are separated by {} where commas are expected (a \
                     spreadsheet with another locale saves it so); save it with commas: `file_name,d1p,d1v,...`",
                    first.escape_debug(),
                    if c == '\t' { "tabs".to_string() } else { format!("`{c}`") }
                ),
                None => format!(
                    "its header starts with `{}` where `file_name` is expected (`file_name,d1p,d1v,...`)",
                    first.escape_debug()
                ),
            }));
        }
        // The row each file name was read from, for a file listed twice.
        let mut rows: HashMap<String, usize> = HashMap::new();
        for (line, rec) in rdr.records().enumerate() {
            let rec = rec.map_err(|e| bad(e.to_string()))?;
            let file = rec
                .get(0)
                .ok_or_else(|| bad(format!("row {} has no file_name", line + 2)))?;
            let base = file.rsplit('/').next().unwrap_or(file).to_string();
            let values: Vec<String> = rec.iter().skip(1).map(|s| s.trim().to_string()).collect();
            if !values.len().is_multiple_of(2) {
                return Err(bad(format!(
                    "row {} has an odd number of attribute fields (expected parameter,value pairs)",
                    line + 2
                )));
            }
            let pairs = values
                .chunks(2)
                .filter(|pv| !pv[0].is_empty())
                .map(|pv| (pv[0].clone(), pv[1].clone()))
                .collect::<Vec<_>>();
            // A file listed twice with other values: which one it learns from would be the last row's, silently.
            if let Some(&row) = rows.get(&base) {
                if map.get(&base) != Some(&pairs) {
                    return Err(bad(format!(
                        "rows {row} and {} give {base} different attributes: keep one",
                        line + 2
                    )));
                }
            }
            rows.insert(base.clone(), line + 2);
            map.insert(base, pairs);
        }
    }
    Ok(map)
}

/// Auxiliary class granularity for the training task (the seed paper's comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelGranularity {
    /// Machine type only.
    Type,
    /// Machine type + section.
    Section,
    /// Machine type + section + attribute string.
    Attribute,
    /// Machine type + section + attribute string + domain.
    AttributeDomain,
}

impl LabelGranularity {
    /// The name `--labels` takes and a bundle's provenance records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Section => "section",
            Self::Attribute => "attribute",
            Self::AttributeDomain => "attribute-domain",
        }
    }

    /// Every granularity, coarsest first.
    pub const ALL: [Self; 4] = [
        Self::Type,
        Self::Section,
        Self::Attribute,
        Self::AttributeDomain,
    ];

    /// Parses [`Self::as_str`]'s names. Bundles written before the provenance used them recorded the Rust
    /// variant names (their `Debug` form: `Type`, `AttributeDomain`, …); those are accepted too, so such bundles
    /// can still be pruned.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|g| g.as_str() == s || format!("{g:?}") == s)
    }

    /// The class name of a clip at this granularity.
    pub fn class_of(self, clip: &Clip) -> String {
        let t = &clip.machine_type;
        let s = clip.name.section;
        match self {
            Self::Type => t.clone(),
            Self::Section => format!("{t}/section_{s:02}"),
            Self::Attribute => format!("{t}/section_{s:02}/{}", clip.attribute_key()),
            Self::AttributeDomain => format!(
                "{t}/section_{s:02}/{}/{}",
                clip.attribute_key(),
                clip.name.domain.map_or("unknown", Domain::as_str)
            ),
        }
    }
}

/// Sorted class names and each clip's class index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMap {
    pub granularity: LabelGranularity,
    pub names: Vec<String>,
}

impl ClassMap {
    pub fn build<'a>(
        granularity: LabelGranularity,
        clips: impl IntoIterator<Item = &'a Clip>,
    ) -> Self {
        let set: BTreeSet<String> = clips.into_iter().map(|c| granularity.class_of(c)).collect();
        Self {
            granularity,
            names: set.into_iter().collect(),
        }
    }

    pub fn index_of(&self, clip: &Clip) -> Option<usize> {
        self.names
            .binary_search(&self.granularity.class_of(clip))
            .ok()
    }
}

/// Why `name` cannot be a machine type, if it cannot: the type names its sections in configs
/// (`"<type>/section_SS"`), in messages and in the submission files' names, so it must be a non-empty name
/// without `/`, control characters or surrounding spaces.
pub fn machine_type_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.chars().any(char::is_control) {
        Some("it contains control characters")
    } else if name.trim() != name {
        Some("it starts or ends with a space")
    } else {
        None
    }
}

/// Name of the DCASE submission file of a section.
pub fn submission_file_name(machine_type: &str, section: u16) -> String {
    format!("anomaly_score_{machine_type}_section_{section:02}_test.csv")
}

/// Writes a DCASE submission file (`file_name,score` rows, no header).
pub fn write_scores(path: &Path, rows: &[(String, f64)]) -> Result<(), DcaseError> {
    write_rows(path, rows.iter().map(|(name, score)| (name, score)))
}

/// Writes `file_name,value` rows, no header: the shape of every DCASE result file.
fn write_rows<N: std::fmt::Display, V: std::fmt::Display>(
    path: &Path,
    rows: impl ExactSizeIterator<Item = (N, V)>,
) -> Result<(), DcaseError> {
    let mut s = String::with_capacity(rows.len() * 64);
    for (name, value) in rows {
        s.push_str(&format!("{name},{value}\n"));
    }
    // Whole or not at all: a full disk left 0-byte score files that `metrics` then read as empty.
    crate::atomic_file::write(path, s.as_bytes()).map_err(|error| DcaseError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// Writes the submission file of one section into `dir` (named by [`submission_file_name`]); returns its path.
pub fn write_submission(
    dir: &Path,
    machine_type: &str,
    section: u16,
    rows: &[(String, f64)],
) -> Result<PathBuf, DcaseError> {
    let path = dir.join(submission_file_name(machine_type, section));
    write_scores(&path, rows)?;
    Ok(path)
}

/// Name of the DCASE decision file of a section: `decision_result_<type>_section_SS_test.csv`. The official
/// evaluator (nttcslab's dcase2023_task2_evaluator) takes a section only when both this file and its
/// [`submission_file_name`] are there.
pub fn decision_file_name(machine_type: &str, section: u16) -> String {
    format!("decision_result_{machine_type}_section_{section:02}_test.csv")
}

/// Writes the decision file of one section into `dir` (`file_name,0|1` rows, 1 = anomalous, no header; named by
/// [`decision_file_name`]); returns its path.
pub fn write_decisions(
    dir: &Path,
    machine_type: &str,
    section: u16,
    rows: &[(String, bool)],
) -> Result<PathBuf, DcaseError> {
    let path = dir.join(decision_file_name(machine_type, section));
    write_rows(&path, rows.iter().map(|(name, a)| (name, u8::from(*a))))?;
    Ok(path)
}

/// Reads a DCASE submission file into file name → score. A header line (a first line whose first field is not
/// a `.wav` name and whose second is not a number), if present, is skipped.
pub fn read_scores(path: &Path) -> Result<BTreeMap<String, f64>, DcaseError> {
    let text = std::fs::read_to_string(path).map_err(|error| DcaseError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut map = BTreeMap::new();
    // A byte-order mark (spreadsheets write one) is not part of the first file name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| DcaseError::BadCsv {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let (name, score) = line
            .rsplit_once(',')
            .ok_or_else(|| bad("expected file_name,score".into()))?;
        let name = name
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let score: f64 = match score.trim().parse() {
            Ok(v) => v,
            // A header: a first line whose first field is not a clip's file name.
            Err(_) if i == 0 && !name.to_ascii_lowercase().ends_with(".wav") => continue,
            Err(_) => return Err(bad(format!("score '{}' is not a number", score.trim()))),
        };
        if !score.is_finite() {
            return Err(bad(format!("score of {name} is not finite")));
        }
        if map.insert(name.clone(), score).is_some() {
            return Err(bad(format!("{name} is listed twice")));
        }
    }
    Ok(map)
}

/// The folders of the DCASE evaluators' ground truth for an evaluation set, whose clip names carry no labels
/// (`section_00_0000.wav`): `ground_truth_data/ground_truth_<type>_section_<SS>_test.csv` (`file_name,0|1`: normal,
/// anomaly) and `ground_truth_domain/…` (`file_name,0|1`: source, target), no header.
pub const GROUND_TRUTH_DATA_DIR: &str = "ground_truth_data";
pub const GROUND_TRUTH_DOMAIN_DIR: &str = "ground_truth_domain";

/// Gives the test clips of `data` the labels of the evaluator's ground truth under `dir` ([`GROUND_TRUTH_DATA_DIR`],
/// [`GROUND_TRUTH_DOMAIN_DIR`]): condition and domain, for each section that has both files; returns how many clips
/// were labelled. A clip of such a section missing from either file, a file naming a clip the data set does not
/// have, a value other than 0 or 1, or a label that contradicts the clip's own name is an error naming it: a
/// ground truth of another set would give wrong numbers. Sections without files keep their names' labels.
pub fn apply_ground_truth(data: &mut Dataset, dir: &Path) -> Result<usize, DcaseError> {
    let (labels_dir, domains_dir) = (
        dir.join(GROUND_TRUTH_DATA_DIR),
        dir.join(GROUND_TRUTH_DOMAIN_DIR),
    );
    for d in [&labels_dir, &domains_dir] {
        if !d.is_dir() {
            return Err(DcaseError::BadCsv {
                path: d.clone(),
                reason: format!(
                    "not found: --ground-truth names the folder that holds {GROUND_TRUTH_DATA_DIR}/ and \
                     {GROUND_TRUTH_DOMAIN_DIR}/ (the DCASE evaluator's layout)"
                ),
            });
        }
    }
    let mut labelled = 0;
    let mut sections_found = 0;
    for (machine_type, section) in data.sections() {
        let file = format!("ground_truth_{machine_type}_section_{section:02}_test.csv");
        let (lp, dp) = (labels_dir.join(&file), domains_dir.join(&file));
        if !lp.is_file() && !dp.is_file() {
            continue;
        }
        sections_found += 1;
        let read = |path: &Path| -> Result<BTreeMap<String, bool>, DcaseError> {
            read_scores(path)?
                .into_iter()
                .map(|(name, v)| match v {
                    0.0 => Ok((name, false)),
                    1.0 => Ok((name, true)),
                    _ => Err(DcaseError::BadCsv {
                        path: path.to_path_buf(),
                        reason: format!("{name}: {v} is neither 0 nor 1"),
                    }),
                })
                .collect()
        };
        let (anomalous, target) = (read(&lp)?, read(&dp)?);
        // Each file lists every test clip of the section, and no other (the first of either named).
        let test: BTreeSet<String> = data
            .clips_of(&machine_type, section, Split::Test)
            .map(|c| c.file_name().to_string())
            .collect();
        for (path, listed) in [(&lp, &anomalous), (&dp, &target)] {
            if let Some(name) = test.iter().find(|n| !listed.contains_key(*n)) {
                return Err(DcaseError::BadCsv {
                    path: path.clone(),
                    reason: format!(
                        "does not list the test clip {name} of the data set: the ground truth of another set?"
                    ),
                });
            }
            if let Some(extra) = listed.keys().find(|k| !test.contains(*k)) {
                return Err(DcaseError::BadCsv {
                    path: path.clone(),
                    reason: format!(
                        "lists {} clips, the data set has {} test clips of {machine_type} section {section:02} and \
                         no {extra}",
                        listed.len(),
                        test.len()
                    ),
                });
            }
        }
        for clip in data.clips.iter_mut().filter(|c| {
            c.machine_type == machine_type && c.name.section == section && c.split == Split::Test
        }) {
            let name = clip.file_name();
            // Both files list it (checked above).
            let condition = if anomalous.get(name) == Some(&true) {
                Condition::Anomaly
            } else {
                Condition::Normal
            };
            let domain = if target.get(name) == Some(&true) {
                Domain::Target
            } else {
                Domain::Source
            };
            if clip.name.condition.is_some_and(|c| c != condition)
                || clip.name.domain.is_some_and(|d| d != domain)
            {
                return Err(DcaseError::BadCsv {
                    path: lp.clone(),
                    reason: format!(
                        "{name}: the ground truth says {} {}, the clip's name otherwise",
                        domain.as_str(),
                        condition.as_str()
                    ),
                });
            }
            clip.name.condition = Some(condition);
            clip.name.domain = Some(domain);
        }
        labelled += test.len();
    }
    if sections_found == 0 {
        return Err(DcaseError::BadCsv {
            path: labels_dir,
            reason:
                "holds no ground_truth_<type>_section_<SS>_test.csv for a section of the data set"
                    .into(),
        });
    }
    Ok(labelled)
}

/// The fault kind of each anomalous clip, from a ground-truth CSV such as the one `sonitor-train synth` writes
/// (`ground_truth.csv`): a header naming the columns, at least `file_name` (`<type>/<split>/<file>.wav`, or the
/// file alone with a `machine_type` column) and `fault`. Normal clips may be listed (fault `none`); they are
/// ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultKinds {
    /// (machine type, file name) → fault kind.
    kinds: HashMap<(String, String), String>,
}

impl FaultKinds {
    pub fn read(path: &Path) -> Result<Self, DcaseError> {
        let text = std::fs::read_to_string(path).map_err(|error| DcaseError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let bad = |line: usize, reason: String| DcaseError::BadCsv {
            path: path.to_path_buf(),
            reason: format!("line {line}: {reason}"),
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(bad(
                1,
                "empty; expected a header with file_name and fault".into(),
            ));
        };
        let fields = |l: &str| -> Vec<String> {
            l.split(',')
                .map(|f| f.trim().trim_matches('"').to_string())
                .collect()
        };
        let header = fields(header);
        let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
        let (Some(file_col), Some(fault_col)) = (column("file_name"), column("fault")) else {
            return Err(bad(
                1,
                format!(
                    "the header ({}) needs the columns file_name and fault",
                    header.join(",")
                ),
            ));
        };
        let type_col = column("machine_type");
        let mut kinds = HashMap::new();
        for (i, line) in lines {
            let f = fields(line);
            let get = |c: usize| f.get(c).map(String::as_str).unwrap_or_default();
            let (file, fault) = (get(file_col), get(fault_col));
            if file.is_empty() {
                return Err(bad(i + 1, "no file_name".into()));
            }
            let name = file.rsplit('/').next().unwrap_or_default().to_string();
            let machine_type = match type_col.map(get).filter(|t| !t.is_empty()) {
                Some(t) => t.to_string(),
                // `<type>/<split>/<file>`: the type is the first of the path's three parts.
                None => match file.split('/').collect::<Vec<_>>()[..] {
                    [t, _, _] => t.to_string(),
                    _ => {
                        return Err(bad(
                            i + 1,
                            format!("{file}: no machine type (write <type>/<split>/<file> or add a machine_type column)"),
                        ))
                    }
                },
            };
            if fault.is_empty() || fault.eq_ignore_ascii_case("none") {
                continue;
            }
            if kinds
                .insert((machine_type, name), fault.to_string())
                .is_some()
            {
                return Err(bad(i + 1, format!("{file} is listed twice")));
            }
        }
        Ok(FaultKinds { kinds })
    }

    /// The fault kind of an anomalous clip, if the file lists it.
    pub fn of(&self, machine_type: &str, file_name: &str) -> Option<&str> {
        self.kinds
            .get(&(machine_type.to_string(), file_name.to_string()))
            .map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// Every listed clip: (machine type, file name, fault kind).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.kinds
            .iter()
            .map(|((t, f), k)| (t.as_str(), f.as_str(), k.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_are_read_by_column_name_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gt.csv");
        // synth's columns, a byte-order mark, a normal row, and a row naming its type in a column.
        std::fs::write(
            &p,
            "\u{feff}file_name,machine_type,section,label,fault\n\
             fan/test/section_00_source_test_anomaly_0000_spd_1000.wav,fan,00,1,imbalance\n\
             fan/test/section_00_source_test_normal_0000_spd_1000.wav,fan,00,0,none\n\
             \n\
             section_00_target_test_anomaly_0003.wav,pump,00,1,\"seal_leak\"\n",
        )
        .unwrap();
        let k = FaultKinds::read(&p).unwrap();
        assert_eq!(
            k.of("fan", "section_00_source_test_anomaly_0000_spd_1000.wav"),
            Some("imbalance")
        );
        assert_eq!(
            k.of("fan", "section_00_source_test_normal_0000_spd_1000.wav"),
            None
        );
        assert_eq!(
            k.of("pump", "section_00_target_test_anomaly_0003.wav"),
            Some("seal_leak")
        );
        assert_eq!(k.of("fan", "section_00_target_test_anomaly_0003.wav"), None);

        // The type from the path when there is no machine_type column; columns in any order.
        std::fs::write(&p, "fault,file_name\nclogging,pump/test/a.wav\n").unwrap();
        assert_eq!(
            FaultKinds::read(&p).unwrap().of("pump", "a.wav"),
            Some("clogging")
        );

        for (text, needle) in [
            ("", "line 1: empty"),
            (
                "name,kind\na.wav,x\n",
                "needs the columns file_name and fault",
            ),
            (
                "file_name,fault\na.wav,x\n",
                "line 2: a.wav: no machine type",
            ),
            (
                "file_name,fault\npump/test/a.wav,x\npump/test/a.wav,y\n",
                "line 3: pump/test/a.wav is listed twice",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = FaultKinds::read(&p).unwrap_err().to_string();
            assert!(e.contains("gt.csv") && e.contains(needle), "{e}");
        }
        let e = FaultKinds::read(&d.path().join("none.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.csv: cannot read"), "{e}");
    }

    #[test]
    fn label_granularity_names_round_trip_and_legacy_names_parse() {
        use LabelGranularity::*;
        for g in LabelGranularity::ALL {
            assert_eq!(LabelGranularity::parse(g.as_str()), Some(g));
            // The spelling bundles recorded before (models/default's manifest says "Type").
            assert_eq!(LabelGranularity::parse(&format!("{g:?}")), Some(g));
        }
        assert_eq!(Attribute.as_str(), "attribute");
        assert_eq!(AttributeDomain.as_str(), "attribute-domain");
        assert_eq!(LabelGranularity::parse("Type"), Some(Type));
        assert_eq!(
            LabelGranularity::parse("AttributeDomain"),
            Some(AttributeDomain)
        );
        assert_eq!(LabelGranularity::parse("attributes"), None);
        assert_eq!(LabelGranularity::parse(""), None);
    }

    #[test]
    fn parses_development_names() {
        let n = ClipName::parse("section_00_source_train_normal_0042_car_A1_spd_28V.wav").unwrap();
        assert_eq!(n.section, 0);
        assert_eq!(n.domain, Some(Domain::Source));
        assert_eq!(n.split, Some(Split::Train));
        assert_eq!(n.condition, Some(Condition::Normal));
        assert_eq!(n.index, 42);
        assert_eq!(n.attributes, "car_A1_spd_28V");
        let n = ClipName::parse("section_02_target_test_anomaly_0001.wav").unwrap();
        assert_eq!(
            (n.section, n.domain, n.attributes.as_str()),
            (2, Some(Domain::Target), "")
        );
    }

    #[test]
    fn parses_evaluation_names() {
        // The extension in any case, as the directory scan takes it.
        for ext in ["wav", "WAV", "Wav"] {
            assert!(
                ClipName::parse(&format!("section_03_0007.{ext}")).is_ok(),
                "{ext}"
            );
        }
        assert!(ClipName::parse("section_03_0007.wave").is_err());
        assert!(ClipName::parse("wav").is_err());
        let n = ClipName::parse("section_03_0007.wav").unwrap();
        assert_eq!(
            (n.section, n.index, n.domain, n.condition),
            (3, 7, None, None)
        );
    }

    #[test]
    fn formats_what_it_parses() {
        let s = ClipName::format(
            1,
            Domain::Target,
            Split::Test,
            Condition::Anomaly,
            7,
            "spd_3",
        );
        assert_eq!(s, "section_01_target_test_anomaly_0007_spd_3.wav");
        let n = ClipName::parse(&s).unwrap();
        assert_eq!(n.attributes, "spd_3");
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for (name, why) in [
            ("fan.wav", "section_SS"),
            ("section_xx_source_train_normal_0000.wav", "section"),
            ("section_00_nowhere_train_normal_0000.wav", "domain"),
            ("section_00_source_train_broken_0000.wav", "condition"),
            ("section_00_source_train_normal_abc.wav", "index"),
            ("section_00_source_train_normal_0000.flac", ".wav"),
        ] {
            let e = ClipName::parse(name).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn scans_a_tree_with_attributes_and_builds_labels() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("fan/train/section_00_source_train_normal_0000_spd_1.wav"));
        touch(&r.join("fan/train/section_00_target_train_normal_0000_spd_2.wav"));
        touch(&r.join("fan/test/section_00_source_test_anomaly_0000_spd_1.wav"));
        touch(&r.join("pump/train/section_01_source_train_normal_0000_q_5.wav"));
        touch(&r.join("pump/notes.txt"));
        std::fs::write(
            r.join("fan/attributes_00.csv"),
            "file_name,d1p,d1v\nfan/train/section_00_source_train_normal_0000_spd_1.wav,speed,1\n",
        )
        .unwrap();
        let ds = scan(r).unwrap();
        assert_eq!(ds.clips.len(), 4);
        assert_eq!(ds.machine_types(), vec!["fan", "pump"]);
        assert_eq!(ds.sections(), vec![("fan".into(), 0), ("pump".into(), 1)]);
        let first = &ds.clips[0];
        assert_eq!(first.attribute_values, vec![("speed".into(), "1".into())]);
        assert_eq!(first.attribute_key(), "speed_1");

        let train: Vec<&Clip> = ds
            .clips
            .iter()
            .filter(|c| c.split == Split::Train)
            .collect();
        let n = |g| ClassMap::build(g, train.iter().copied()).names.len();
        assert_eq!(n(LabelGranularity::Type), 2);
        assert_eq!(n(LabelGranularity::Section), 2);
        assert_eq!(n(LabelGranularity::Attribute), 3);
        assert_eq!(n(LabelGranularity::AttributeDomain), 3);
        let m = ClassMap::build(LabelGranularity::AttributeDomain, train.iter().copied());
        assert_eq!(m.names[0], "fan/section_00/spd_2/target");
        assert_eq!(m.index_of(train[0]), Some(1));
    }

    /// An attributes CSV saved with semicolons (a spreadsheet's other locale), one whose header does not start
    /// with `file_name`, or one that lists a file twice with other values is refused by name: the first two were
    /// read as one column and every row ignored, the third kept its last row, all without a word.
    #[test]
    fn an_attributes_csv_of_another_shape_or_with_a_file_twice_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let clip = "fan/train/section_00_source_train_normal_0000.wav";
        touch(&r.join(clip));
        let refused = |csv: &str| {
            std::fs::write(r.join("fan/attributes_00.csv"), csv).unwrap();
            scan(r).err().map(|e| e.to_string()).unwrap_or_default()
        };
        let e = refused(&format!("file_name;d1p;d1v\n{clip};speed;1\n"));
        assert!(
            e.contains("attributes_00.csv") && e.contains("separated by `;`"),
            "{e}"
        );
        let e = refused(&format!("file_name\td1p\td1v\n{clip}\tspeed\t1\n"));
        assert!(e.contains("separated by tabs"), "{e}");
        let e = refused(&format!("name,d1p,d1v\n{clip},speed,1\n"));
        assert!(e.contains("header starts with `name`"), "{e}");
        let e = refused(&format!(
            "file_name,d1p,d1v\n{clip},speed,1\n{clip},speed,2\n"
        ));
        assert!(
            e.contains("rows 2 and 3 give") && e.contains("different attributes"),
            "{e}"
        );
        // The same row twice is the same attributes, and a byte-order mark before the header is no field.
        assert_eq!(
            refused(&format!(
                "\u{feff}file_name,d1p,d1v\n{clip},speed,1\n{clip},speed,1\n"
            )),
            ""
        );
    }

    #[test]
    fn sections_missing_a_split_are_found() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("fan/train/section_00_source_train_normal_0000.wav"));
        touch(&r.join("fan/test/section_00_source_test_normal_0000.wav"));
        // Its training clips lost (an empty train directory), its test clips kept.
        std::fs::create_dir_all(r.join("pump/train")).unwrap();
        touch(&r.join("pump/test/section_01_source_test_anomaly_0000.wav"));
        touch(&r.join("valve/train/section_02_target_train_normal_0000.wav"));
        let ds = scan(r).unwrap();
        assert_eq!(ds.sections_without(Split::Train), vec![("pump".into(), 1)]);
        assert_eq!(ds.sections_without(Split::Test), vec![("valve".into(), 2)]);
    }

    #[test]
    fn scan_errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(scan(&missing)
            .unwrap_err()
            .to_string()
            .contains("not found"));
        assert!(scan(d.path()).unwrap_err().to_string().contains(
            "no machine type directories (<type>/train or <type>/test) found; for a folder of raw \
                       recordings, run `sonitor-train import` first"
        ));
        // One level off either way: the folder above the types (DCASE's dev_data/ holds raw/), or a type's own.
        std::fs::create_dir_all(d.path().join("dev_data/raw/fan/train")).unwrap();
        let e = scan(&d.path().join("dev_data")).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "the machine types are one level down: give {}",
                d.path().join("dev_data/raw").display()
            )),
            "{e}"
        );
        let e = scan(&d.path().join("dev_data/raw/fan"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("it is itself a machine type's folder")
                && e.contains(&format!(", {}", d.path().join("dev_data/raw").display())),
            "{e}"
        );
        assert!(scan(&d.path().join("dev_data/raw")).is_ok());
        // A file given as the data directory is said to be one, not to be missing.
        let file = d.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        let e = scan(&file).unwrap_err().to_string();
        assert!(
            e.contains("afile: not a directory") && !e.contains("not found"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        touch(&d.path().join("fan/train/recording_1.wav"));
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("recording_1.wav")
                && e.contains("not DCASE-shaped")
                && e.contains("`sonitor-train import`"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("fan/train/recording_1.wav")).unwrap();
        touch(
            &d.path()
                .join("fan/train/section_00_source_train_normal_0000.wav"),
        );
        // A set whose writer was stopped half-way says so in its manifest: trained on, it gave a bundle of the
        // types written so far, without a word.
        let manifest = d.path().join("synth.json");
        std::fs::write(
            &manifest,
            r#"{"generator":"sonitor-synth","complete":false}"#,
        )
        .unwrap();
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("synth.json") && e.contains("interrupted run"),
            "{e}"
        );
        std::fs::write(
            &manifest,
            r#"{"generator":"sonitor-synth","complete":true}"#,
        )
        .unwrap();
        assert_eq!(scan(d.path()).unwrap().clips.len(), 1);
        #[cfg(unix)]
        {
            std::fs::remove_file(&manifest).unwrap();
            let made = std::process::Command::new("mkfifo").arg(&manifest).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(e.contains("synth.json: not a regular file"), "{e}");
            std::fs::remove_file(&manifest).unwrap();
        }
        // A name that is not UTF-8 is named as such (it was "does not end in .wav").
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let name = std::ffi::OsStr::from_bytes(b"section_00_source_train_normal_0001\xff.wav");
            touch(&d.path().join("fan/train").join(name));
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(e.contains("not UTF-8"), "{e}");
        }
    }

    /// A machine type that cannot be read, or whose split directory is spelled in another case, is an error: it
    /// was skipped, and a whole machine type trained without a word. `lost+found` and hidden directories are no
    /// machine types.
    #[test]
    fn a_machine_type_that_cannot_be_read_is_not_skipped() {
        let d = tempfile::tempdir().unwrap();
        touch(
            &d.path()
                .join("fan/train/section_00_source_train_normal_0000.wav"),
        );
        std::fs::create_dir_all(d.path().join("lost+found/x")).unwrap();
        std::fs::create_dir_all(d.path().join(".git/Train")).unwrap();
        assert_eq!(scan(d.path()).unwrap().clips.len(), 1);
        touch(
            &d.path()
                .join("valve/Train/section_00_source_train_normal_0000.wav"),
        );
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("valve/Train") && e.contains("in lower case: rename it"),
            "{e}"
        );
        std::fs::remove_dir_all(d.path().join("valve")).unwrap();
        // Also beside a test/ spelled right: the type was taken, and its training clips silently left out.
        touch(
            &d.path()
                .join("valve/Train/section_00_source_train_normal_0000.wav"),
        );
        touch(
            &d.path()
                .join("valve/test/section_00_source_test_normal_0000.wav"),
        );
        let e = scan(d.path()).unwrap_err().to_string();
        assert!(e.contains("valve/Train"), "{e}");
        std::fs::remove_dir_all(d.path().join("valve")).unwrap();
        #[cfg(unix)]
        {
            let fifo = d
                .path()
                .join("fan/train/section_00_source_train_normal_0001.wav");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            std::fs::remove_file(&fifo).unwrap();
            let csv = d.path().join("fan/attributes_00.csv");
            let made = std::process::Command::new("mkfifo").arg(&csv).status();
            assert!(made.is_ok_and(|s| s.success()), "mkfifo");
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(e.contains("attributes_00.csv: not a regular file"), "{e}");
            std::fs::remove_file(&csv).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let pump = d.path().join("pump");
            touch(&pump.join("train/section_00_source_train_normal_0000.wav"));
            std::fs::set_permissions(&pump, std::fs::Permissions::from_mode(0o000)).unwrap();
            // Root reads it all the same; the check needs another user.
            if std::fs::read_dir(&pump).is_err() {
                let e = scan(d.path()).unwrap_err().to_string();
                assert!(e.contains("pump") && e.contains("cannot read"), "{e}");
            }
            std::fs::set_permissions(&pump, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// A type directory whose name cannot name a machine type is refused before any clip is read, not found
    /// out at the end of a training run when the bundle is written.
    #[test]
    fn a_type_directory_with_an_unusable_name_is_refused() {
        for (dir, why) in [
            (" fan", "starts or ends with a space"),
            ("fan\tx", "control"),
        ] {
            let d = tempfile::tempdir().unwrap();
            touch(
                &d.path()
                    .join(dir)
                    .join("train/section_00_source_train_normal_0000.wav"),
            );
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(
                e.contains("not usable as a machine type")
                    && e.contains(why)
                    && e.contains("rename it"),
                "{dir:?}: {e}"
            );
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let d = tempfile::tempdir().unwrap();
            let dir = std::ffi::OsStr::from_bytes(b"f\xffn");
            touch(
                &d.path()
                    .join(dir)
                    .join("train/section_00_source_train_normal_0000.wav"),
            );
            let e = scan(d.path()).unwrap_err().to_string();
            assert!(e.contains("not UTF-8"), "{e}");
        }
        assert_eq!(machine_type_problem("fan"), None);
        assert_eq!(machine_type_problem("ToyCar"), None);
        assert_eq!(machine_type_problem(""), Some("empty"));
        assert_eq!(machine_type_problem("a/b"), Some("it contains '/'"));
    }

    #[test]
    fn wrong_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        touch(
            &d.path()
                .join("fan/train/section_00_source_test_normal_0000.wav"),
        );
        assert!(scan(d.path())
            .unwrap_err()
            .to_string()
            .contains("name says test"));
    }

    #[test]
    fn score_files_round_trip_and_reject_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(submission_file_name("fan", 0));
        write_scores(&p, &[("a.wav".into(), 0.5), ("b.wav".into(), -1.25)]).unwrap();
        let m = read_scores(&p).unwrap();
        assert_eq!(m["a.wav"], 0.5);
        assert_eq!(m["b.wav"], -1.25);
        std::fs::write(&p, "a.wav,0.1\nb.wav,zero\n").unwrap();
        assert!(read_scores(&p).unwrap_err().to_string().contains("line 2"));
        std::fs::write(&p, "a.wav,0.1\na.wav,0.2\n").unwrap();
        assert!(read_scores(&p).unwrap_err().to_string().contains("twice"));
        // A header and a byte-order mark are skipped; a first row with a bad score is an error, not a header.
        std::fs::write(&p, "\u{feff}file_name,score\na.wav,0.1\n").unwrap();
        assert_eq!(read_scores(&p).unwrap().len(), 1);
        std::fs::write(&p, "\u{feff}a.wav,0.1\n").unwrap();
        assert_eq!(read_scores(&p).unwrap()["a.wav"], 0.1);
        std::fs::write(&p, "a.wav,0.5x\nb.wav,0.2\n").unwrap();
        let e = read_scores(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("0.5x"), "{e}");
    }
}

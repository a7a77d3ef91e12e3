//! One sound model per machine type, with its attributes (operating conditions) and its faults.
//!
//! Every model is a sum of physically motivated components, each with per-clip random variation so that
//! "normal" is a distribution: the shaft speed is offset by ~0.5 % and wanders slowly ([`Rotor`]), every
//! harmonic gets its own random gain (±1.5 dB) and phase, resonances move by a few percent, and the balance
//! between tonal and broadband parts varies by a few dB. Faults are applied inside the models
//! ([`super::faults`] holds the kinds, severities and shared mechanisms); a fault that *adds* a component
//! adds it at a level relative to the healthy machine's RMS.
//!
//! | type | attributes (source → target) | normal sound | faults |
//! |---|---|---|---|
//! | `fan` | `spd` 1000/1200/1400 → 1600 rpm; `nb` blades 5/7 | blade-pass harmonics, aerodynamic broadband noise modulated at blade pass and shaft rate, motor hum | imbalance, blade_damage, bearing_wear |
//! | `pump` | `spd` 1450/1750 rpm; `flow` 70/100 → 50 % of best-efficiency flow | mains hum, rotor-slot harmonics, vane pass, flow turbulence, recirculation at low flow, cooling-fan hiss | cavitation, clogging, seal_leak |
//! | `gearbox` | `rpm` 900/1200/1500 → 900/1500; `load` 1/2 → 3 | gear-mesh frequency (23 teeth) and harmonics with shaft sidebands, mesh-excited housing modes | tooth_crack, gear_wear, misalignment |
//! | `bearing` | `vel` 1000/1500/2000 → 2400 rpm; `loc` mic position 1/2 | shaft harmonics, mains hum, cooling fan, rolling noise ringing the bearing/housing modes | outer_race, inner_race, ball_defect |
//! | `press` | `spm` 100/125 → 150 strokes/min; `mat` 1 steel / 2 aluminium; `thk` 2/3 mm → 3 | flywheel drive hum, per stroke: clutch click, ram impact ringing the frame/die modes, ejection air puff | misfire, loose_part, air_leak |
//!
//! The target domain's attribute values lie outside the source range (faster fan and bearing, throttled
//! pump, heavier gearbox load, faster press), which moves harmonics and changes the tonal/broadband balance;
//! [`super::scene`] adds a different room and microphone on top.

use std::f64::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sonitor_core::dcase::Domain;

use super::dsp::{self, db, gauss, phase, range, Biquad, Rotor};
use super::faults::{self, DefectTrain, Fault, FaultKind};

/// Attribute `(key, value)` pairs of one clip, in name order.
pub type Attrs = Vec<(&'static str, u32)>;

/// The machine types the generator models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineType {
    Fan,
    Pump,
    Gearbox,
    Bearing,
    Press,
}

impl MachineType {
    pub const ALL: [MachineType; 5] = [
        MachineType::Fan,
        MachineType::Pump,
        MachineType::Gearbox,
        MachineType::Bearing,
        MachineType::Press,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MachineType::Fan => "fan",
            MachineType::Pump => "pump",
            MachineType::Gearbox => "gearbox",
            MachineType::Bearing => "bearing",
            MachineType::Press => "press",
        }
    }

    pub fn parse(s: &str) -> Option<MachineType> {
        Self::ALL.into_iter().find(|t| t.name() == s.trim())
    }

    /// Attribute keys, in the order they appear in names and in `attributes_00.csv`.
    pub fn attribute_keys(self) -> &'static [&'static str] {
        match self {
            MachineType::Fan => &["spd", "nb"],
            MachineType::Pump => &["spd", "flow"],
            MachineType::Gearbox => &["rpm", "load"],
            MachineType::Bearing => &["vel", "loc"],
            MachineType::Press => &["spm", "mat", "thk"],
        }
    }

    /// The operating conditions (attribute combinations) of a domain, cycled through by clip index.
    pub fn combos(self, domain: Domain) -> Vec<Attrs> {
        let keys = self.attribute_keys();
        let values: Vec<Vec<u32>> = match (self, domain) {
            (MachineType::Fan, Domain::Source) => vec![vec![1000, 1200, 1400], vec![5, 7]],
            (MachineType::Fan, Domain::Target) => vec![vec![1600], vec![5, 7]],
            (MachineType::Pump, Domain::Source) => vec![vec![1450, 1750], vec![70, 100]],
            (MachineType::Pump, Domain::Target) => vec![vec![1450, 1750], vec![50]],
            (MachineType::Gearbox, Domain::Source) => vec![vec![900, 1200, 1500], vec![1, 2]],
            (MachineType::Gearbox, Domain::Target) => vec![vec![900, 1500], vec![3]],
            (MachineType::Bearing, Domain::Source) => vec![vec![1000, 1500, 2000], vec![1, 2]],
            (MachineType::Bearing, Domain::Target) => vec![vec![2400], vec![1, 2]],
            (MachineType::Press, Domain::Source) => vec![vec![100, 125], vec![1, 2], vec![2, 3]],
            (MachineType::Press, Domain::Target) => vec![vec![150], vec![1, 2], vec![3]],
        };
        // Cartesian product, first key varying slowest.
        let mut out: Vec<Attrs> = vec![Vec::new()];
        for (k, vs) in keys.iter().zip(values) {
            out = out
                .into_iter()
                .flat_map(|a| {
                    vs.iter().map(move |&v| {
                        let mut a = a.clone();
                        a.push((*k, v));
                        a
                    })
                })
                .collect();
        }
        out
    }

    /// The fault kinds of this type.
    pub fn faults(self) -> [FaultKind; 3] {
        match self {
            MachineType::Fan => [
                FaultKind::Imbalance,
                FaultKind::BladeDamage,
                FaultKind::BearingWear,
            ],
            MachineType::Pump => [
                FaultKind::Cavitation,
                FaultKind::Clogging,
                FaultKind::SealLeak,
            ],
            MachineType::Gearbox => [
                FaultKind::ToothCrack,
                FaultKind::GearWear,
                FaultKind::Misalignment,
            ],
            MachineType::Bearing => [
                FaultKind::OuterRace,
                FaultKind::InnerRace,
                FaultKind::BallDefect,
            ],
            MachineType::Press => [FaultKind::Misfire, FaultKind::LoosePart, FaultKind::AirLeak],
        }
    }

    /// Renders `n` samples of the machine alone (no room, no background), roughly unit RMS.
    pub fn render(
        self,
        attrs: &Attrs,
        fault: Option<&Fault>,
        n: usize,
        rng: &mut ChaCha8Rng,
    ) -> Vec<f32> {
        let mut x = match self {
            MachineType::Fan => fan(attrs, fault, n, rng),
            MachineType::Pump => pump(attrs, fault, n, rng),
            MachineType::Gearbox => gearbox(attrs, fault, n, rng),
            MachineType::Bearing => bearing(attrs, fault, n, rng),
            MachineType::Press => press(attrs, fault, n, rng),
        };
        dsp::remove_dc(&mut x);
        dsp::normalize_rms(&mut x, 1.0);
        x
    }
}

/// The attribute string of a combination: `key_value` pairs joined by `_`.
pub fn attr_string(attrs: &Attrs) -> String {
    attrs
        .iter()
        .map(|(k, v)| format!("{k}_{v}"))
        .collect::<Vec<_>>()
        .join("_")
}

fn attr(attrs: &Attrs, key: &str, default: f64) -> f64 {
    attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(default, |&(_, v)| v as f64)
}

/// The fault if it is of kind `k`.
fn is(fault: Option<&Fault>, k: FaultKind) -> Option<&Fault> {
    fault.filter(|f| f.kind == k)
}

/// A random per-component gain: `±sigma_db` (normal) around 0 dB.
fn jitter_gain(rng: &mut ChaCha8Rng, sigma_db: f64) -> f32 {
    db(sigma_db * gauss(rng))
}

/// Multiplies `x` by `env` sample by sample.
fn modulate(x: &mut [f32], env: &[f32]) {
    x.iter_mut().zip(env).for_each(|(v, e)| *v *= e);
}

/// Adds a unit-RMS fault component `c` at `level` times the RMS of the healthy signal `x`.
fn add_fault_component(x: &mut [f32], c: &[f32], level: f32, base_rms: f32) {
    dsp::add_scaled(x, c, level * base_rms);
}

/// Mains (50 Hz) magnetic hum of an induction motor: 100 Hz and its harmonics.
fn mains_hum(rng: &mut ChaCha8Rng, x: &mut [f32], amps: &[f32]) {
    let f = 100.0 * (1.0 + 0.0008 * gauss(rng));
    for (k, &a) in amps.iter().enumerate() {
        dsp::add_tone(x, f * (k + 1) as f64, a * jitter_gain(rng, 1.5), phase(rng));
    }
}

// ---------------------------------------------------------------------------------------------------------
// fan

/// Axial fan on an induction motor.
///
/// The blades chop the flow `B` times per revolution: the blade-pass frequency `BPF = B·f_shaft` and its
/// harmonics dominate the tonal part (falling off roughly as 1/m). Turbulent boundary layers and vortex
/// shedding give a broadband hump whose centre scales with tip speed; as each blade passes the strut it is
/// modulated at BPF, and a slight rotor asymmetry modulates it at the shaft rate.
///
/// Faults: **imbalance** (a mass offset: the rotating force shakes housing and mounts at 1× and, through the
/// mounts' nonlinearity, its first harmonics; the whole sound is amplitude modulated at 1× as tip clearance
/// varies), **blade_damage** (a chipped/bent blade breaks the B-fold symmetry: shaft orders next to the
/// blade-pass harmonics, `m·B ± 1, ± 2`, appear, the broadband noise gets a once-per-revolution "whoosh", and
/// the damaged tip sheds extra vortex noise at 1.8–3.2 kHz), **bearing_wear** (outer-race spall of the motor bearing: impacts at BPFO ≈
/// 3.05× shaft ringing 2.6–5.6 kHz modes).
fn fan(attrs: &Attrs, fault: Option<&Fault>, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let rpm = attr(attrs, "spd", 1200.0);
    let blades = attr(attrs, "nb", 5.0).round().max(2.0);
    let f_s = rpm / 60.0 * (1.0 + 0.005 * gauss(rng));
    let rotor = Rotor::new(rng, n, f_s, 0.003);

    let mut tonal = vec![0.0f32; n];
    for m in 1..=30 {
        let amp = (m as f32).powf(-1.1) * jitter_gain(rng, 1.5);
        rotor.add_order(&mut tonal, m as f64 * blades, amp, phase(rng));
    }
    rotor.add_order(&mut tonal, 1.0, 0.05 * jitter_gain(rng, 2.0), phase(rng));
    rotor.add_order(&mut tonal, 2.0, 0.03 * jitter_gain(rng, 2.0), phase(rng));
    mains_hum(rng, &mut tonal, &[0.06, 0.02]);
    if let Some(f) = is(fault, FaultKind::BladeDamage) {
        // Asymmetry orders around the first blade-pass harmonics (relative to the tonal level).
        let l = f.level(-16.0, 2.0) / 2.0;
        for m in 1..=4 {
            for d in [-2.0, -1.0, 1.0, 2.0] {
                let k = m as f64 * blades + d;
                let a = l * (m as f32).powf(-0.8) * jitter_gain(rng, 2.0) / (d as f32).abs();
                rotor.add_order(&mut tonal, k, a, phase(rng));
            }
        }
    }
    dsp::normalize_rms(&mut tonal, 1.0);

    let fc = 700.0 * rpm / 1200.0 * range(rng, 0.92, 1.08);
    let mut hump = dsp::pink(rng, n);
    dsp::filter(&mut hump, &[Biquad::bandpass(fc, 0.6)]);
    dsp::normalize_rms(&mut hump, 1.0);
    let mut noise = dsp::pink(rng, n);
    dsp::filter(&mut noise, &[Biquad::highpass(150.0, 0.7)]);
    dsp::add_scaled(&mut noise, &hump, 1.2 * jitter_gain(rng, 1.0));
    let bp_mod = rotor.modulation(blades, 0.25 * range(rng, 0.8, 1.2) as f32, phase(rng));
    modulate(&mut noise, &bp_mod);
    let mut shaft_depth = 0.05 * range(rng, 0.6, 1.4);
    if let Some(f) = is(fault, FaultKind::BladeDamage) {
        shaft_depth += 0.3 * f.amount();
    }
    let shaft_mod = rotor.modulation(1.0, shaft_depth as f32, phase(rng));
    modulate(&mut noise, &shaft_mod);
    dsp::normalize_rms(&mut noise, 1.0);

    let mut x = tonal;
    dsp::add_scaled(&mut x, &noise, db(range(rng, -1.0, 3.0)));
    let base = dsp::rms(&x);

    if let Some(f) = is(fault, FaultKind::Imbalance) {
        // The rotating unbalance force shakes the housing and its mounts: 1× and, through the mounts'
        // nonlinearity, its first harmonics.
        let mut c = vec![0.0f32; n];
        for (k, a) in [(1.0, 1.0), (2.0, 0.5), (3.0, 0.3), (4.0, 0.2), (5.0, 0.12)] {
            rotor.add_order(&mut c, k, a * jitter_gain(rng, 2.0), phase(rng));
        }
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-14.0, 4.0), base);
        let am = rotor.modulation(1.0, (0.35 * f.amount()).min(0.6) as f32, phase(rng));
        modulate(&mut x, &am);
    }
    if let Some(f) = is(fault, FaultKind::BearingWear) {
        let modes = [
            (range(rng, 2600.0, 4200.0), 0.0015, 1.0),
            (range(rng, 4400.0, 5600.0), 0.0010, 0.7),
        ];
        let train = DefectTrain {
            order: 3.05,
            jitter: 0.015,
            rev_mod: 0.2,
            mod_order: 1.0,
            hit_spread: 0.15,
        };
        let c = faults::defect_impulses(rng, &rotor, train, &modes);
        add_fault_component(&mut x, &c, f.level(-18.0, 2.0), base);
    }
    if let Some(f) = is(fault, FaultKind::BladeDamage) {
        // The damaged tip sheds extra vortex noise once per revolution.
        let mut c = dsp::white(rng, n);
        let fc = range(rng, 1800.0, 3200.0);
        dsp::filter(&mut c, &[Biquad::bandpass(fc, 1.2)]);
        modulate(&mut c, &rotor.modulation(1.0, 0.8, phase(rng)));
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-18.0, -2.0), base);
    }
    x
}

// ---------------------------------------------------------------------------------------------------------
// pump

/// Centrifugal pump (6-vane impeller) on a 2/4-pole induction motor.
///
/// The motor contributes magnetic hum at twice the mains frequency and its harmonics, and rotor-slot
/// harmonics (28 slots × shaft rate, amplitude modulated at 100 Hz, i.e. sidebands ±100 Hz). The impeller
/// gives vane-pass tones `Z·f_shaft` whose strength grows the further the pump runs from its best-efficiency
/// flow. The fluid gives broadband turbulence noise (level ∝ flow²); at low flow, recirculation in the
/// impeller eye adds a low-frequency, unsteady rumble. The motor's cooling fan adds high-frequency hiss.
///
/// Faults: **cavitation** (low suction pressure: vapour bubbles collapse as a random broadband crackle, in
/// step with vane pass), **clogging** (a partly blocked impeller: hydraulic imbalance at 1×, vane-pass
/// sidebands `Z ± 1`, less through-flow noise, more recirculation), **seal_leak** (mechanical-seal leak:
/// turbulent jet hiss at 3–5.5 kHz, modulated at 1× by the rotating seal face).
fn pump(attrs: &Attrs, fault: Option<&Fault>, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let rpm = attr(attrs, "spd", 1450.0);
    let flow = attr(attrs, "flow", 100.0) / 100.0;
    let clog = is(fault, FaultKind::Clogging).map_or(0.0, |f| f.amount());
    let flow_eff = flow * (1.0 - 0.35 * clog);
    // Slip grows with load (flow).
    let f_s = rpm / 60.0 * (1.0 - 0.012 * flow_eff) * (1.0 + 0.004 * gauss(rng));
    let rotor = Rotor::new(rng, n, f_s, 0.002);
    let vanes = 6.0;

    let mut tonal = vec![0.0f32; n];
    mains_hum(rng, &mut tonal, &[0.5, 0.2, 0.1]);
    // Rotor-slot harmonic with ±100 Hz sidebands.
    let mut slot = vec![0.0f32; n];
    rotor.add_order(&mut slot, 28.0, 0.15 * jitter_gain(rng, 2.0), phase(rng));
    let mut am100 = vec![1.0f32; n];
    dsp::add_tone(&mut am100, 100.0, 0.8, phase(rng));
    modulate(&mut slot, &am100);
    dsp::add_scaled(&mut tonal, &slot, 1.0);
    for (k, a) in [(1.0, 0.05), (2.0, 0.03), (3.0, 0.02)] {
        rotor.add_order(&mut tonal, k, a * jitter_gain(rng, 2.0), phase(rng));
    }
    let pulsation = 1.0 + 1.5 * (1.0 - flow_eff).abs() as f32;
    for m in 1..=6 {
        let a = 0.4 * (m as f32).powf(-1.3) * pulsation * jitter_gain(rng, 1.5);
        rotor.add_order(&mut tonal, vanes * m as f64, a, phase(rng));
    }
    dsp::normalize_rms(&mut tonal, 1.0);

    // Through-flow turbulence.
    let mut turb = dsp::pink(rng, n);
    dsp::filter(
        &mut turb,
        &[Biquad::lowpass(
            1200.0 * rpm / 1450.0 * range(rng, 0.9, 1.1),
            0.7,
        )],
    );
    dsp::normalize_rms(&mut turb, 1.0);
    let turb_gain = (0.3 + 0.9 * flow_eff * flow_eff) as f32 * jitter_gain(rng, 1.0);
    // Recirculation rumble below ~60 % of best-efficiency flow.
    let recirc_amt = (0.75 - flow_eff).max(0.0) * 2.0;
    let mut recirc = dsp::brown(rng, n);
    dsp::filter(
        &mut recirc,
        &[Biquad::lowpass(300.0, 0.7), Biquad::highpass(25.0, 0.7)],
    );
    let env = dsp::slow_envelope(rng, n, 1.0, 6.0, 0.6);
    modulate(&mut recirc, &env);
    dsp::normalize_rms(&mut recirc, 1.0);
    // Motor cooling fan.
    let mut fan_hiss = dsp::white(rng, n);
    dsp::filter(
        &mut fan_hiss,
        &[Biquad::highpass(1800.0, 0.7), Biquad::lowpass(6000.0, 0.7)],
    );
    let fan_mod = rotor.modulation(11.0, 0.1, phase(rng));
    modulate(&mut fan_hiss, &fan_mod);
    dsp::normalize_rms(&mut fan_hiss, 1.0);

    let mut x = tonal;
    dsp::add_scaled(&mut x, &turb, turb_gain);
    dsp::add_scaled(&mut x, &recirc, 1.2 * recirc_amt as f32);
    dsp::add_scaled(&mut x, &fan_hiss, 0.25 * jitter_gain(rng, 1.5));
    let base = dsp::rms(&x);

    if let Some(f) = is(fault, FaultKind::Cavitation) {
        let gate = rotor.modulation(vanes, 0.7, phase(rng));
        let c = faults::crackle(rng, n, 300.0 + 1500.0 * f.amount(), &gate);
        add_fault_component(&mut x, &c, f.level(-18.0, 2.0), base);
    }
    if let Some(f) = is(fault, FaultKind::Clogging) {
        let mut c = vec![0.0f32; n];
        rotor.add_order(&mut c, 1.0, 1.0, phase(rng));
        rotor.add_order(&mut c, vanes - 1.0, 0.6, phase(rng));
        rotor.add_order(&mut c, vanes + 1.0, 0.6, phase(rng));
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-16.0, 2.0), base);
    }
    if let Some(f) = is(fault, FaultKind::SealLeak) {
        let centre = range(rng, 3000.0, 5500.0);
        let mut c = faults::hiss(rng, n, centre, 1.2);
        let m = rotor.modulation(1.0, 0.2, phase(rng));
        modulate(&mut c, &m);
        add_fault_component(&mut x, &c, f.level(-20.0, 0.0), base);
    }
    x
}

// ---------------------------------------------------------------------------------------------------------
// gearbox

/// Single-stage spur-gear reducer, 23-tooth pinion on the input shaft, 57-tooth wheel.
///
/// Tooth engagement makes the gear-mesh frequency `GMF = 23·f_in` and its harmonics (transmission error); the
/// higher the load, the more the teeth deflect and the richer the harmonics. Small eccentricities give
/// sidebands at `GMF ± f_in` and `GMF ± f_out`. The mesh pulses also excite housing modes (1.1–6 kHz), which
/// appear as mesh-synchronous broadband noise.
///
/// Faults: **tooth_crack** (a cracked pinion tooth: once per input revolution the mesh stiffness drops — an
/// impact ringing the housing and the gear body's 6.3–7 kHz mode, and a short dip of the mesh tones, i.e.
/// many `GMF ± k·f_in` sidebands),
/// **gear_wear** (distributed wear: higher mesh harmonics and sidebands grow, friction noise rises),
/// **misalignment** (2× shaft component, `GMF ± 2 f_in` sidebands from twice-per-rev mesh modulation, and
/// stronger mesh harmonics as the load concentrates on one end of the face).
fn gearbox(attrs: &Attrs, fault: Option<&Fault>, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let rpm = attr(attrs, "rpm", 1200.0);
    let load = attr(attrs, "load", 1.0);
    let f1 = rpm / 60.0 * (1.0 + 0.004 * gauss(rng));
    let rotor = Rotor::new(rng, n, f1, 0.003);
    let (z1, z2) = (23.0, 57.0);
    let out_ratio = z1 / z2;
    let wear = is(fault, FaultKind::GearWear).map_or(0.0, |f| f.amount()) as f32;
    let misalign = is(fault, FaultKind::Misalignment).map_or(0.0, |f| f.amount()) as f32;

    let mut mesh = vec![0.0f32; n];
    let base_h = [1.0f32, 0.55, 0.3, 0.18, 0.1];
    for (h, &a) in base_h.iter().enumerate() {
        let hf = h as f32;
        let a = a
            * (1.0 + 0.15 * (load as f32 - 1.0) * hf)
            * (1.0 + (2.5 * wear + 1.5 * misalign) * hf.min(1.0))
            * jitter_gain(rng, 1.5);
        let order = z1 * (h + 1) as f64;
        rotor.add_order(&mut mesh, order, a, phase(rng));
        if h < 3 {
            let sb = a * (1.0 + 4.0 * wear);
            for d in [-1.0, 1.0] {
                rotor.add_order(
                    &mut mesh,
                    order + d,
                    sb * 0.08 * jitter_gain(rng, 2.0),
                    phase(rng),
                );
                rotor.add_order(
                    &mut mesh,
                    order + d * out_ratio,
                    sb * 0.06 * jitter_gain(rng, 2.0),
                    phase(rng),
                );
            }
        }
    }
    if let Some(f) = is(fault, FaultKind::ToothCrack) {
        // Mesh stiffness drop while the cracked tooth is in contact (about one tooth pitch of rotation).
        let depth = (0.6 * f.amount()).min(0.85);
        let th0 = phase(rng);
        let sigma = TAU / z1 * 0.6;
        for (i, v) in mesh.iter_mut().enumerate() {
            let d = (rotor.angle_at(i) - th0).rem_euclid(TAU);
            let d = if d > TAU / 2.0 { d - TAU } else { d };
            *v *= 1.0 - (depth * (-(d * d) / (2.0 * sigma * sigma)).exp()) as f32;
        }
    }
    if let Some(f) = is(fault, FaultKind::Misalignment) {
        let am = rotor.modulation(2.0, (0.7 * f.amount()).min(0.9) as f32, phase(rng));
        modulate(&mut mesh, &am);
    }
    let mut tonal = mesh;
    rotor.add_order(&mut tonal, 1.0, 0.05 * jitter_gain(rng, 2.0), phase(rng));
    rotor.add_order(&mut tonal, 2.0, 0.03 * jitter_gain(rng, 2.0), phase(rng));
    rotor.add_order(
        &mut tonal,
        out_ratio,
        0.05 * jitter_gain(rng, 2.0),
        phase(rng),
    );
    dsp::normalize_rms(&mut tonal, 1.0);

    // Mesh-synchronous excitation of the housing modes.
    let housing = [
        (range(rng, 1100.0, 1300.0), 0.010, 1.0),
        (range(rng, 2400.0, 2800.0), 0.007, 0.8),
        (range(rng, 3900.0, 4400.0), 0.005, 0.6),
        (range(rng, 5600.0, 6200.0), 0.004, 0.4),
    ];
    let mut exc = dsp::white(rng, n);
    let mesh_mod = rotor.modulation(z1, 0.6, phase(rng));
    modulate(&mut exc, &mesh_mod);
    let mut structural = dsp::ring_modes(&exc, &housing);
    dsp::normalize_rms(&mut structural, 1.0);
    let mut broad = dsp::pink(rng, n);
    dsp::filter(&mut broad, &[Biquad::lowpass(3000.0, 0.7)]);

    let mut x = tonal;
    dsp::add_scaled(
        &mut x,
        &structural,
        db(range(rng, -8.0, -4.0)) * (0.7 + 0.15 * load as f32),
    );
    dsp::add_scaled(&mut x, &broad, db(-14.0 + 2.0 * gauss(rng)));
    let base = dsp::rms(&x);

    if let Some(f) = is(fault, FaultKind::ToothCrack) {
        // A sharp impact: the housing modes, shorter, plus the gear body's own high mode.
        let mut modes: Vec<(f64, f64, f32)> =
            housing.iter().map(|&(fr, _, g)| (fr, 0.002, g)).collect();
        modes.push((range(rng, 6300.0, 7000.0), 0.001, 0.5));
        let train = DefectTrain {
            order: 1.0,
            jitter: 0.002,
            rev_mod: 0.0,
            mod_order: 1.0,
            hit_spread: 0.1,
        };
        let c = faults::defect_impulses(rng, &rotor, train, &modes);
        add_fault_component(&mut x, &c, f.level(-22.0, -2.0), base);
    }
    if let Some(f) = is(fault, FaultKind::GearWear) {
        let mut c = dsp::white(rng, n);
        dsp::filter(
            &mut c,
            &[Biquad::highpass(2000.0, 0.7), Biquad::lowpass(6000.0, 0.7)],
        );
        modulate(&mut c, &rotor.modulation(z1, 0.5, phase(rng)));
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-18.0, 0.0), base);
    }
    if let Some(f) = is(fault, FaultKind::Misalignment) {
        let mut c = vec![0.0f32; n];
        rotor.add_order(&mut c, 2.0, 1.0, phase(rng));
        rotor.add_order(&mut c, 1.0, 0.5, phase(rng));
        rotor.add_order(&mut c, 4.0, 0.25, phase(rng));
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-14.0, 4.0), base);
    }
    x
}

// ---------------------------------------------------------------------------------------------------------
// bearing

/// Motor-driven shaft on deep-groove ball bearings (9 balls, d/D = 0.2), listened to at one of two positions.
///
/// Healthy: shaft harmonics, mains hum, the motor's cooling fan (8 blades), and rolling noise — distributed
/// surface roughness excites the bearing/housing resonances (2.7–5.6 kHz) as broadband noise, weakly
/// modulated at the cage frequency. Microphone position `loc 2` is farther from the bearing: a duller
/// (−5 dB above 1.8 kHz) and boomier (+4 dB at 700 Hz) path.
///
/// Defect frequencies (orders of the shaft): BPFO = n/2 (1 − d/D) = 3.6, BPFI = n/2 (1 + d/D) = 5.4,
/// BSF = D/2d (1 − (d/D)²) = 2.4, FTF = ½ (1 − d/D) = 0.4. Faults: **outer_race** (stationary spall: a
/// regular train of hits at BPFO, nearly constant strength), **inner_race** (spall on the rotating race:
/// hits at BPFI, strength modulated at 1× as it passes the load zone), **ball_defect** (hits at 2·BSF, both
/// races, modulated at the cage frequency FTF, more irregular).
fn bearing(attrs: &Attrs, fault: Option<&Fault>, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let rpm = attr(attrs, "vel", 1500.0);
    let loc = attr(attrs, "loc", 1.0);
    let f_r = rpm / 60.0 * (1.0 + 0.004 * gauss(rng));
    let rotor = Rotor::new(rng, n, f_r, 0.002);

    let mut tonal = vec![0.0f32; n];
    mains_hum(rng, &mut tonal, &[0.3, 0.1, 0.05]);
    for (k, a) in [(1.0, 0.15), (2.0, 0.08), (3.0, 0.04), (4.0, 0.03)] {
        rotor.add_order(&mut tonal, k, a * jitter_gain(rng, 2.0), phase(rng));
    }
    rotor.add_order(&mut tonal, 8.0, 0.1 * jitter_gain(rng, 2.0), phase(rng));
    rotor.add_order(&mut tonal, 16.0, 0.04 * jitter_gain(rng, 2.0), phase(rng));
    dsp::normalize_rms(&mut tonal, 1.0);

    let mut fan_noise = dsp::white(rng, n);
    dsp::filter(
        &mut fan_noise,
        &[Biquad::highpass(1000.0, 0.7), Biquad::lowpass(5000.0, 0.7)],
    );
    modulate(&mut fan_noise, &rotor.modulation(8.0, 0.15, phase(rng)));
    dsp::normalize_rms(&mut fan_noise, 1.0);

    let modes = [
        (range(rng, 2700.0, 3100.0), 0.004, 1.0),
        (range(rng, 3800.0, 4300.0), 0.003, 0.8),
        (range(rng, 5000.0, 5600.0), 0.002, 0.6),
    ];
    let mut exc = dsp::white(rng, n);
    modulate(&mut exc, &rotor.modulation(0.4, 0.1, phase(rng)));
    let mut rolling = dsp::ring_modes(&exc, &modes);
    dsp::normalize_rms(&mut rolling, 1.0);
    let mut low = dsp::brown(rng, n);
    dsp::filter(&mut low, &[Biquad::lowpass(400.0, 0.7)]);

    let mut x = tonal;
    dsp::add_scaled(&mut x, &fan_noise, 0.3 * jitter_gain(rng, 1.5));
    dsp::add_scaled(&mut x, &rolling, db(range(rng, -6.0, -2.0)));
    dsp::add_scaled(&mut x, &low, db(-10.0 + 2.0 * gauss(rng)));
    let base = dsp::rms(&x);

    let hit_modes: Vec<(f64, f64, f32)> = modes.iter().map(|&(f, _, g)| (f, 0.0012, g)).collect();
    let defect = match fault.map(|f| f.kind) {
        Some(FaultKind::OuterRace) => Some((
            DefectTrain {
                order: 3.6,
                jitter: 0.01,
                rev_mod: 0.1,
                mod_order: 1.0,
                hit_spread: 0.1,
            },
            (-18.0, 4.0),
        )),
        Some(FaultKind::InnerRace) => Some((
            DefectTrain {
                order: 5.4,
                jitter: 0.01,
                rev_mod: 0.8,
                mod_order: 1.0,
                hit_spread: 0.15,
            },
            (-18.0, 4.0),
        )),
        Some(FaultKind::BallDefect) => Some((
            DefectTrain {
                order: 4.8,
                jitter: 0.02,
                rev_mod: 0.7,
                mod_order: 0.4,
                hit_spread: 0.3,
            },
            (-14.0, 6.0),
        )),
        _ => None,
    };
    if let (Some((train, (lo, hi))), Some(f)) = (defect, fault) {
        let c = faults::defect_impulses(rng, &rotor, train, &hit_modes);
        add_fault_component(&mut x, &c, f.level(lo, hi), base);
    }
    if loc >= 2.0 {
        dsp::filter(
            &mut x,
            &[
                Biquad::high_shelf(1800.0, -5.0),
                Biquad::peaking(700.0, 1.0, 4.0),
            ],
        );
    }
    x
}

// ---------------------------------------------------------------------------------------------------------
// press

/// Mechanical stamping press: a flywheel driven by a motor, a clutch that engages once per stroke.
///
/// Continuous: the drive motor (24.5 Hz shaft orders, mains hum, broadband). Per stroke: the clutch engages
/// (a click ringing a small 5 kHz part), the ram hits the sheet (an impact ringing the frame/die modes —
/// steel `mat 1` lower and longer, aluminium `mat 2` higher and shorter; a thicker sheet `thk 3` hits harder
/// with a longer contact, i.e. less high frequency), then the part is ejected by an air blast (a band of noise
/// with a fast attack). Stroke timing jitters by ~2 ms.
///
/// Faults: **misfire** (clutch/brake trouble: irregular timing, weak strokes, double hits, and a clutch-slip
/// squeal at 1.6–2.4 kHz), **loose_part** (something loose rattles after each impact: a few secondary hits
/// ringing a light part at 2.8–4.8 kHz), **air_leak** (the pneumatic line leaks: continuous hiss at
/// 4–6 kHz and weaker ejection blasts).
fn press(attrs: &Attrs, fault: Option<&Fault>, n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let spm = attr(attrs, "spm", 100.0);
    let mat = attr(attrs, "mat", 1.0);
    let thk = attr(attrs, "thk", 2.0);
    let f_st = spm / 60.0 * (1.0 + 0.005 * gauss(rng));
    let misfire = is(fault, FaultKind::Misfire).map_or(0.0, |f| f.amount());
    let leak = is(fault, FaultKind::AirLeak).map_or(0.0, |f| f.amount());

    // Continuous drive.
    let f_motor = 24.5 * (1.0 + 0.003 * gauss(rng));
    let motor = Rotor::new(rng, n, f_motor, 0.004);
    let mut drive = vec![0.0f32; n];
    for k in 1..=6 {
        motor.add_order(
            &mut drive,
            k as f64,
            0.1 / k as f32 * jitter_gain(rng, 2.0),
            phase(rng),
        );
    }
    mains_hum(rng, &mut drive, &[0.15, 0.05]);
    dsp::normalize_rms(&mut drive, 1.0);
    let mut drive_noise = dsp::pink(rng, n);
    dsp::filter(&mut drive_noise, &[Biquad::lowpass(2500.0, 0.7)]);
    dsp::add_scaled(&mut drive, &drive_noise, 0.7);

    // Stroke events.
    let (freqs, taus, gains): ([f64; 6], [f64; 6], [f32; 6]) = if mat >= 2.0 {
        (
            [460.0, 1270.0, 2550.0, 3900.0, 5400.0, 6800.0],
            [0.09, 0.055, 0.035, 0.024, 0.015, 0.01],
            [0.8, 0.9, 0.7, 0.5, 0.35, 0.25],
        )
    } else {
        (
            [380.0, 1050.0, 2100.0, 3300.0, 4700.0, 6100.0],
            [0.15, 0.09, 0.06, 0.04, 0.025, 0.015],
            [1.0, 0.8, 0.6, 0.45, 0.3, 0.2],
        )
    };
    let shift = 1.0 + 0.01 * gauss(rng);
    let frame_modes: Vec<(f64, f64, f32)> = (0..6)
        .map(|i| {
            (
                freqs[i] * shift * (1.0 + 0.004 * gauss(rng)),
                taus[i],
                gains[i] * jitter_gain(rng, 1.0),
            )
        })
        .collect();
    let strength = (thk / 2.0).powf(1.5) as f32;
    let jitter_s = 0.002 + 0.03 * misfire;
    let period = dsp::FS / f_st;
    let mut impacts = vec![0.0f32; n];
    let mut clicks = vec![0.0f32; n];
    let mut squeal_gate = vec![0.0f32; n];
    let mut puffs = vec![0.0f32; n];
    let mut hits: Vec<(f64, f32)> = Vec::new();
    let mut t = -rng.gen::<f64>() * period;
    let puff_noise = dsp::white(rng, n);
    while t < n as f64 + period {
        let tk = t + jitter_s * dsp::FS * gauss(rng);
        let mut a = strength * (1.0 + 0.08 * gauss(rng) as f32);
        if rng.gen::<f64>() < 0.4 * misfire {
            a *= 0.3;
        }
        dsp::put_impulse(&mut impacts, tk, a);
        hits.push((tk, a));
        if rng.gen::<f64>() < 0.25 * misfire {
            let t2 = tk + dsp::FS * range(rng, 0.006, 0.015);
            dsp::put_impulse(&mut impacts, t2, 0.4 * a);
            hits.push((t2, 0.4 * a));
        }
        let t_click = tk - dsp::FS * 0.08;
        dsp::put_impulse(&mut clicks, t_click, 0.15 * (1.0 + 0.1 * gauss(rng) as f32));
        // Clutch-slip window (60 ms after the click).
        let (s0, s1) = (
            t_click.max(0.0) as usize,
            (t_click + 0.06 * dsp::FS).max(0.0) as usize,
        );
        for v in squeal_gate.iter_mut().take(s1.min(n)).skip(s0) {
            *v = 1.0;
        }
        // Ejection air blast 120 ms after the impact.
        let tp = tk + 0.12 * dsp::FS;
        let pa = (1.0 - 0.4 * leak as f32).max(0.2) * db(1.5 * gauss(rng));
        let start = tp.max(0.0) as usize;
        for i in start..(start + (0.25 * dsp::FS) as usize).min(n) {
            let dt = (i as f64 - tp) / dsp::FS;
            if dt < 0.0 {
                continue;
            }
            let env = (1.0 - (-dt / 0.003).exp()) * (-dt / 0.04).exp();
            puffs[i] += pa * env as f32 * puff_noise[i];
        }
        t += period;
    }
    // Longer contact for thicker sheet: less high-frequency excitation.
    dsp::filter(
        &mut impacts,
        &[Biquad::lowpass(
            if thk >= 3.0 { 2600.0 } else { 3800.0 },
            0.7,
        )],
    );
    let mut strokes = dsp::ring_modes(&impacts, &frame_modes);
    let click_ring = dsp::ring_modes(&clicks, &[(range(rng, 4800.0, 5300.0), 0.002, 1.0)]);
    dsp::add_scaled(&mut strokes, &click_ring, 1.0);
    dsp::filter(&mut puffs, &[Biquad::bandpass(2500.0, 0.8)]);
    let stroke_rms = dsp::rms(&strokes).max(1e-9);
    let puff_rms = dsp::rms(&puffs).max(1e-9);
    dsp::add_scaled(&mut strokes, &puffs, 0.35 * stroke_rms / puff_rms);
    dsp::normalize_rms(&mut strokes, 1.0);

    let mut x = strokes;
    dsp::add_scaled(&mut x, &drive, db(range(rng, -8.0, -4.0)));
    let base = dsp::rms(&x);

    if let Some(f) = is(fault, FaultKind::Misfire) {
        let centre = range(rng, 1600.0, 2400.0);
        let mut c = faults::hiss(rng, n, centre, 3.0);
        modulate(&mut c, &squeal_gate);
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-18.0, -2.0), base);
    }
    if let Some(f) = is(fault, FaultKind::LoosePart) {
        let mut exc = vec![0.0f32; n];
        for &(tk, a) in &hits {
            let bounces = rng.gen_range(3..=8);
            let mut tb = tk;
            let mut ab = 0.5 * a;
            for _ in 0..bounces {
                tb += dsp::FS * range(rng, 0.008, 0.04);
                dsp::put_impulse(&mut exc, tb, ab * (1.0 + 0.2 * gauss(rng) as f32));
                ab *= 0.65;
            }
        }
        let fp = range(rng, 2800.0, 4800.0);
        let mut c = dsp::ring_modes(&exc, &[(fp, 0.003, 1.0), (fp * 1.62, 0.002, 0.6)]);
        dsp::normalize_rms(&mut c, 1.0);
        add_fault_component(&mut x, &c, f.level(-24.0, -6.0), base);
    }
    if let Some(f) = is(fault, FaultKind::AirLeak) {
        let centre = range(rng, 4000.0, 6000.0);
        let c = faults::hiss(rng, n, centre, 1.0);
        add_fault_component(&mut x, &c, f.level(-31.0, -13.0), base);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combos_cover_the_product_and_target_values_are_new() {
        for t in MachineType::ALL {
            let s = t.combos(Domain::Source);
            let g = t.combos(Domain::Target);
            assert!(s.len() >= 4 && !g.is_empty(), "{}", t.name());
            for c in s.iter().chain(&g) {
                assert_eq!(c.len(), t.attribute_keys().len());
                assert!((2..=3).contains(&c.len()));
            }
            let src: std::collections::BTreeSet<String> = s.iter().map(attr_string).collect();
            for c in &g {
                assert!(
                    !src.contains(&attr_string(c)),
                    "{}: {}",
                    t.name(),
                    attr_string(c)
                );
            }
        }
        assert_eq!(
            attr_string(&MachineType::Press.combos(Domain::Source)[0]),
            "spm_100_mat_1_thk_2"
        );
    }
}

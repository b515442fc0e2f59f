//! Mints the token pools of the soak run (`benches/soak/soak.py`) offline, one token per line
//! as `KIND<TAB>JTI<TAB>TOKEN`:
//!
//! - `target`: valid tokens the soak revokes one by one through the issuer API;
//! - `valid`: valid tokens never revoked;
//! - `expired`: signed by the same active key, but by an issuer whose clock reads two hours
//!   ago, so `exp` lies an hour in the past, far beyond any leeway. The issuer API only mints
//!   1 h and longer, and nothing in the service signs a past `exp`; this uses the library's
//!   own `Issuer` with a [`ManualClock`], so the tokens are byte for byte what the issuer
//!   would have minted two hours ago;
//! - `foreign`: well-formed tokens signed by a freshly generated key that no verifier trusts
//!   (rejected `unknown_key`).
//!
//! All are tenant `acme`, subject `soak`, scope `runs:read`, 1 h, stamped with the
//! configuration's issuer and audience.
//!
//! Usage: `soak_tokens CONFIG_FILE OUT_FILE TARGETS VALID EXPIRED FOREIGN`

use std::error::Error;
use std::io::{BufWriter, Write as _};
use std::sync::Arc;

use edgetoken::clock::{Clock as _, ManualClock, SystemClock};
use edgetoken::keys::KeyDir;
use edgetoken::permissions::Scope;
use edgetoken::settings::Settings;
use edgetoken::token::{Issuer, Lifetime, MintRequest};

/// How far back the expired tokens' issuer clock is set: a 1 h token minted then expired an
/// hour ago.
const EXPIRED_MINTED_SECS_AGO: i64 = 2 * 3600;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, out, targets, valid, expired, foreign] = args.as_slice() else {
        return Err("usage: soak_tokens CONFIG_FILE OUT_FILE TARGETS VALID EXPIRED FOREIGN".into());
    };
    let config = Settings::load(Some(config.as_ref()), std::iter::empty())?;
    let signing = || KeyDir::new(&config.keys.dir).load_signing();
    let issuer = |key, clock: Arc<dyn edgetoken::clock::Clock>| {
        Issuer::new(
            key,
            config.token.issuer.clone(),
            config.token.audience.clone(),
            clock,
        )
    };
    let now = issuer(signing()?, Arc::new(SystemClock));
    let past = issuer(
        signing()?,
        Arc::new(ManualClock::at(
            SystemClock.unix_now() - EXPIRED_MINTED_SECS_AGO,
        )),
    );
    // A key of its own in a directory that is removed on exit: no verifier trusts it.
    let foreign_dir = tempfile::tempdir()?;
    let foreign_key = KeyDir::new(foreign_dir.path()).generate(true)?;
    let stranger = issuer(foreign_key, Arc::new(SystemClock));

    let request = MintRequest {
        subject: "soak".parse()?,
        tenant: "acme".parse()?,
        scope: Scope::parse_claim("runs:read")?,
        lifetime: Lifetime::OneHour,
    };
    let mut file = BufWriter::new(std::fs::File::create(out)?);
    for (kind, issuer, count) in [
        ("target", &now, targets),
        ("valid", &now, valid),
        ("expired", &past, expired),
        ("foreign", &stranger, foreign),
    ] {
        for _ in 0..count.parse::<u64>()? {
            let minted = issuer.mint(&request)?;
            writeln!(
                file,
                "{kind}\t{}\t{}",
                minted.claims.token_id.as_str(),
                minted.token.expose()
            )?;
        }
    }
    file.flush()?;
    Ok(())
}

//! Mints many tokens offline for the HTTP load benchmark (`benches/load/run.sh`): one token
//! per line, each with a fresh `jti`, signed with the active key of the configuration's key
//! directory and stamped with its issuer and audience.
//!
//! Usage: `mint_many CONFIG_FILE OUT_FILE COUNT [TENANT]` (tenant `acme` unless named, scope
//! `runs:read`, 1 h).

use std::error::Error;
use std::io::{BufWriter, Write as _};
use std::sync::Arc;

use edgetoken::clock::SystemClock;
use edgetoken::keys::KeyDir;
use edgetoken::permissions::Scope;
use edgetoken::settings::Settings;
use edgetoken::token::{Issuer, Lifetime, MintRequest};

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(config), Some(out), Some(count)) = (args.next(), args.next(), args.next()) else {
        return Err("usage: mint_many CONFIG_FILE OUT_FILE COUNT [TENANT]".into());
    };
    let tenant = args.next().unwrap_or_else(|| "acme".to_owned());
    let config = Settings::load(Some(config.as_ref()), std::iter::empty())?;
    let issuer = Issuer::new(
        KeyDir::new(&config.keys.dir).load_signing()?,
        config.token.issuer.clone(),
        config.token.audience.clone(),
        Arc::new(SystemClock),
    );
    let request = MintRequest {
        subject: "bench".parse()?,
        tenant: tenant.parse()?,
        scope: Scope::parse_claim("runs:read")?,
        lifetime: Lifetime::OneHour,
    };
    let mut file = BufWriter::new(std::fs::File::create(out)?);
    for _ in 0..count.parse::<u64>()? {
        writeln!(file, "{}", issuer.mint(&request)?.token.expose())?;
    }
    file.flush()?;
    Ok(())
}

use anyhow::Result;
use liboci_cli::Spec;

pub fn spec(args: Spec) -> Result<u8> {
    let bundle = match args.bundle {
        Some(b) => b,
        None => std::env::current_dir()?,
    };
    libcontainer::spec::write_default_spec(&bundle, args.rootless)?;
    Ok(0)
}

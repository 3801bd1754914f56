//! Prints the Topology CRD as YAML; `make crds` writes it to `crds/topology.yaml`.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", squall_api::crd_yaml()?);
    Ok(())
}

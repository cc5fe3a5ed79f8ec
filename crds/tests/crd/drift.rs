//! The committed `crds/yaml/*` is exactly what the API types generate.

use std::{collections::BTreeSet, path::PathBuf};

#[test]
fn committed_yaml_matches_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let rendered = bridgenet_crds::crdgen::render_all().unwrap();
    for (name, text) in &rendered {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!("crds/yaml/{name}: {e}; run `cargo run -p bridgenet-crds --bin crdgen`")
        });
        assert!(
            committed == *text,
            "crds/yaml/{name} is stale: run `cargo run -p bridgenet-crds --bin crdgen` and commit the result"
        );
    }
    // No leftover YAML of a CRD that no longer exists.
    let expected: BTreeSet<String> = rendered.into_iter().map(|(name, _)| name).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert_eq!(
        present, expected,
        "crds/yaml holds files crdgen does not generate"
    );
}

#[test]
fn yaml_round_trips_as_a_crd() {
    for (name, text) in bridgenet_crds::crdgen::render_all().unwrap() {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap();
        assert_eq!(format!("{}.yaml", crd.metadata.name.unwrap()), name);
        assert_eq!(crd.spec.group, "bridgenet.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert!(version.served && version.storage);
        let has_status = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .is_some_and(|p| p.contains_key("status"));
        // A kind with a status (NetworkOverlay has none: one writer, the operator) keeps it in a
        // subresource so that its spec and status writers do not race.
        assert_eq!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            has_status,
            "{name}: status must be a subresource exactly when the kind has one"
        );
    }
}

//! ARM request bodies, as documented for the api-versions in `arm.rs`.

use serde::Serialize;
use std::collections::BTreeMap;

/// A tracked resource: location, tags, optional SKU, properties.
#[derive(Serialize)]
pub struct Tracked<P> {
    pub location: String,
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<P>,
}

#[derive(Serialize)]
pub struct Sku {
    pub name: &'static str,
}

/// A reference to another resource.
#[derive(Serialize)]
pub struct Id {
    pub id: String,
}

#[derive(Serialize)]
pub struct Named<P> {
    pub name: String,
    pub properties: P,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub os_type: &'static str,
    pub hyper_v_generation: &'static str,
    pub creation_data: CreationData,
    pub security_profile: DiskSecurity,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationData {
    pub create_option: &'static str,
    pub upload_size_bytes: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSecurity {
    pub security_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantAccess {
    pub access: &'static str,
    pub duration_in_seconds: u32,
}

#[derive(Serialize)]
pub struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nsg {
    pub security_rules: Vec<Named<Rule>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub protocol: &'static str,
    pub source_port_range: &'static str,
    pub destination_port_range: String,
    pub source_address_prefixes: Vec<String>,
    pub destination_address_prefix: &'static str,
    pub access: &'static str,
    pub priority: u32,
    pub direction: &'static str,
}

#[derive(Serialize)]
pub struct PublicIp {
    #[serde(rename = "publicIPAllocationMethod")]
    pub allocation_method: &'static str,
    #[serde(rename = "publicIPAddressVersion")]
    pub address_version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vnet {
    pub address_space: AddressSpace,
    pub subnets: Vec<Named<Subnet>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressSpace {
    pub address_prefixes: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    pub address_prefix: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    pub network_security_group: Id,
    pub ip_configurations: Vec<Named<IpConfiguration>>,
}

#[derive(Serialize)]
pub struct IpConfiguration {
    #[serde(rename = "privateIPAllocationMethod")]
    pub private_allocation_method: &'static str,
    pub subnet: Id,
    #[serde(rename = "publicIPAddress")]
    pub public_ip_address: Id,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vm {
    pub hardware_profile: HardwareProfile,
    pub storage_profile: StorageProfile,
    pub network_profile: NetworkProfile,
    pub security_profile: VmSecurity,
    pub diagnostics_profile: DiagnosticsProfile,
    /// Base64 of the agent's provisioning document (IMDS `compute/userData`).
    pub user_data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareProfile {
    pub vm_size: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfile {
    pub os_disk: OsDisk,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OsDisk {
    pub os_type: &'static str,
    pub create_option: &'static str,
    pub managed_disk: ManagedDisk,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedDisk {
    pub id: String,
    pub security_profile: VmDiskSecurity,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDiskSecurity {
    pub security_encryption_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkProfile {
    pub network_interfaces: Vec<NicReference>,
}

#[derive(Serialize)]
pub struct NicReference {
    pub id: String,
    pub properties: NicReferenceProperties,
}

#[derive(Serialize)]
pub struct NicReferenceProperties {
    pub primary: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSecurity {
    pub security_type: &'static str,
    pub uefi_settings: UefiSettings,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UefiSettings {
    pub secure_boot_enabled: bool,
    pub v_tpm_enabled: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticsProfile {
    pub boot_diagnostics: BootDiagnostics,
}

#[derive(Serialize)]
pub struct BootDiagnostics {
    pub enabled: bool,
}

//! The generic RFC 3711 counter mode and key derivation, run with AES-128,
//! against the test vectors of RFC 3711 Appendix B.2 and B.3.

mod common;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use common::{hex, unhex};
use gb35114::rfc3711::{cm_apply, kdf, srtp_iv, BlockCipher128};

struct Aes(aes::Aes128);

impl Aes {
    fn new(key: &[u8]) -> Aes {
        Aes(aes::Aes128::new(GenericArray::from_slice(key)))
    }
}

impl BlockCipher128 for Aes {
    fn encrypt_block(&self, block: &mut [u8; 16]) {
        self.0
            .encrypt_block(GenericArray::from_mut_slice(&mut block[..]));
    }
}

#[test]
fn appendix_b2_aes_cm_keystream() {
    let c = Aes::new(&unhex("2B7E151628AED2A6ABF7158809CF4F3C"));
    let salt: [u8; 14] = unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let iv = srtp_iv(&salt, 0, 0); // SSRC 0, ROC 0, SEQ 0
    assert_eq!(hex(&iv), "f0f1f2f3f4f5f6f7f8f9fafbfcfd0000");
    let mut ks = vec![0u8; 0xff02 * 16];
    cm_apply(&c, &iv, &mut ks);
    let block = |i: usize| hex(&ks[i * 16..(i + 1) * 16]).to_uppercase();
    assert_eq!(block(0x0000), "E03EAD0935C95E80E166B16DD92B4EB4");
    assert_eq!(block(0x0001), "D23513162B02D0F72A43A2FE4A5F97AB");
    assert_eq!(block(0x0002), "41E95B3BB0A2E8DD477901E4FCA894C0");
    assert_eq!(block(0xfeff), "EC8CDF7398607CB0F2D21675EA9EA1E4");
    assert_eq!(block(0xff00), "362B7C3C6773516318A077D7FC5073AE");
    assert_eq!(block(0xff01), "6A2CC3787889374FBEB4C81B17BA6C44");
}

#[test]
fn appendix_b3_key_derivation() {
    let master = Aes::new(&unhex("E1F97A0D3E018BE0D64FA32C06DE4139"));
    let salt: [u8; 14] = unhex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
    let mut enc = [0u8; 16];
    kdf(&master, &salt, 0, 0, &mut enc);
    assert_eq!(hex(&enc).to_uppercase(), "C61E7A93744F39EE10734AFE3FF7A087");
    let mut s = [0u8; 14];
    kdf(&master, &salt, 2, 0, &mut s);
    assert_eq!(hex(&s).to_uppercase(), "30CBBC08863D8C85D49DB34A9AE1");
    let mut auth = [0u8; 94];
    kdf(&master, &salt, 1, 0, &mut auth);
    assert_eq!(
        hex(&auth).to_uppercase(),
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE\
         E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25\
         6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
    );
}

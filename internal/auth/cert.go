package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"

	"github.com/mailpipe/mailpipe/internal/config"
)

// CertificateExpiry returns the NotAfter of the identity's client
// certificate (the one matching the private key when the key can be read,
// else the first). ok is false when the identity uses no certificate.
func CertificateExpiry(id config.Identity) (notAfter time.Time, ok bool, err error) {
	if id.CertificateFile == "" {
		return time.Time{}, false, nil
	}
	pemData, err := readPEMs(id)
	if err != nil {
		return time.Time{}, true, err
	}
	certs, key := parsePEMs(pemData)
	if len(certs) == 0 {
		return time.Time{}, true, fmt.Errorf("certificate_file: no CERTIFICATE block in %s", id.CertificateFile)
	}
	if leaf := matchingCert(certs, key); leaf != nil {
		return leaf.NotAfter, true, nil
	}
	return certs[0].NotAfter, true, nil
}

// certCredential loads the certificate credential for identity key (e.g.
// "identities.main"), checking that the key is an unencrypted RSA key that
// belongs to a certificate in the file.
func certCredential(key string, id config.Identity) (confidential.Credential, *x509.Certificate, error) {
	certField := key + ".certificate_file"
	where := certField
	if id.PrivateKeyFile != "" {
		where = certField + " (key in " + key + ".private_key_file)"
	}
	pemData, err := readPEMs(id)
	if err != nil {
		return confidential.Credential{}, nil, fmt.Errorf("%s: %w", certField, err)
	}
	if err := checkKeyBlocks(pemData); err != nil {
		return confidential.Credential{}, nil, fmt.Errorf("%s: %w", where, err)
	}
	certs, priv, err := confidential.CertFromPEM(pemData, "")
	if err != nil {
		return confidential.Credential{}, nil, fmt.Errorf("%s: %w", where, err)
	}
	leaf := matchingCert(certs, priv)
	if leaf == nil {
		return confidential.Credential{}, nil, fmt.Errorf("%s: the private key does not belong to any certificate in the file", where)
	}
	cred, err := confidential.NewCredFromCert(certs, priv)
	if err != nil {
		return confidential.Credential{}, nil, fmt.Errorf("%s: %w", where, err)
	}
	return cred, leaf, nil
}

func readPEMs(id config.Identity) ([]byte, error) {
	data, err := os.ReadFile(id.CertificateFile)
	if err != nil {
		return nil, err
	}
	if id.PrivateKeyFile != "" {
		k, err := os.ReadFile(id.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("private_key_file: %w", err)
		}
		data = append(append(data, '\n'), k...)
	}
	return data, nil
}

// checkKeyBlocks gives clear errors for keys MSAL cannot use: MSAL signs
// client assertions with RSA only and reads no encrypted keys.
func checkKeyBlocks(data []byte) error {
	found := false
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if _, enc := b.Headers["DEK-Info"]; enc {
			return errors.New("the private key is encrypted; provide it unencrypted (openssl pkcs8 -topk8 -nocrypt) and protect the file instead")
		}
		switch b.Type {
		case "ENCRYPTED PRIVATE KEY":
			return errors.New("the private key is encrypted; provide it unencrypted (openssl pkcs8 -topk8 -nocrypt) and protect the file instead")
		case "EC PRIVATE KEY":
			return nonRSA("ECDSA")
		case "RSA PRIVATE KEY":
			found = true
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return fmt.Errorf("cannot parse the private key: %w", err)
			}
			switch k.(type) {
			case *rsa.PrivateKey:
			case *ecdsa.PrivateKey:
				return nonRSA("ECDSA")
			case ed25519.PrivateKey:
				return nonRSA("Ed25519")
			default:
				return nonRSA(fmt.Sprintf("%T", k))
			}
			found = true
		}
	}
	if !found {
		return errors.New("no private key found (PEM \"PRIVATE KEY\" or \"RSA PRIVATE KEY\"); put it in the file or set private_key_file")
	}
	return nil
}

func nonRSA(kind string) error {
	return fmt.Errorf("the private key is %s, but Entra ID certificate credentials (MSAL) need an RSA key: "+
		"create an RSA key (2048 bits or more) and certificate, and register the certificate on the app", kind)
}

func parsePEMs(data []byte) ([]*x509.Certificate, crypto.PrivateKey) {
	var certs []*x509.Certificate
	var key crypto.PrivateKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return certs, key
		}
		switch b.Type {
		case "CERTIFICATE":
			if c, err := x509.ParseCertificate(b.Bytes); err == nil {
				certs = append(certs, c)
			}
		case "RSA PRIVATE KEY":
			if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
				key = k
			}
		case "PRIVATE KEY":
			if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
				key = k
			}
		case "EC PRIVATE KEY":
			if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
				key = k
			}
		}
	}
}

// matchingCert is the certificate whose public key belongs to key.
func matchingCert(certs []*x509.Certificate, key crypto.PrivateKey) *x509.Certificate {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil
	}
	pub := signer.Public()
	for _, c := range certs {
		if eq, ok := c.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && eq.Equal(pub) {
			return c
		}
	}
	return nil
}

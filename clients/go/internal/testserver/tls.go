package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLS is a throw-away PKI for one test server: a CA, the server's certificate for 127.0.0.1 and
// localhost, and a client certificate for mutual TLS, all signed by the CA.
type TLS struct {
	// Roots trusts the CA: a client's tls.Config.RootCAs.
	Roots *x509.CertPool
	// ClientCert is a certificate the server accepts when it requires client certificates.
	ClientCert tls.Certificate

	certFile, keyFile, caFile string
}

// NewTLS makes the CA and the certificates in the test's temporary directory.
func NewTLS(t testing.TB) *TLS {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert := newCA(t)
	serverKey, serverDER := issue(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "mbostream test server"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	clientKey, clientDER := issue(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "mbostream test client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p := &TLS{
		Roots:    x509.NewCertPool(),
		certFile: filepath.Join(dir, "server.pem"),
		keyFile:  filepath.Join(dir, "server.key"),
		caFile:   filepath.Join(dir, "ca.pem"),
	}
	p.Roots.AddCert(caCert)
	writePEM(t, p.certFile, "CERTIFICATE", serverDER)
	writePEM(t, p.keyFile, "PRIVATE KEY", marshalKey(t, serverKey))
	writePEM(t, p.caFile, "CERTIFICATE", caCert.Raw)
	clientLeaf, err := x509.ParseCertificate(clientDER)
	if err != nil {
		t.Fatal(err)
	}
	p.ClientCert = tls.Certificate{Certificate: [][]byte{clientDER}, PrivateKey: clientKey, Leaf: clientLeaf}
	return p
}

// CAFile is the CA certificate's PEM file (what a client's --ca-file names).
func (p *TLS) CAFile() string { return p.caFile }

// ClientConfig trusts the CA and, when withCert is set, presents the client certificate.
func (p *TLS) ClientConfig(withCert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: p.Roots, MinVersion: tls.VersionTLS12}
	if withCert {
		cfg.Certificates = []tls.Certificate{p.ClientCert}
	}
	return cfg
}

// serveArgs are the `mbostream serve` flags that serve over TLS, requiring client certificates
// signed by the CA when mutual is set.
func (p *TLS) serveArgs(mutual bool) []string {
	args := []string{"--tls-cert-file", p.certFile, "--tls-key-file", p.keyFile}
	if mutual {
		args = append(args, "--tls-client-ca-file", p.caFile)
	}
	return args
}

func newCA(t testing.TB) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mbostream test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

// issue signs template (given a serial number and a validity) with the CA; the new key and the
// certificate's DER.
func issue(t testing.TB, caKey *ecdsa.PrivateKey, ca *x509.Certificate, template *x509.Certificate) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	template.SerialNumber = serial
	template.NotBefore, template.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	template.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func marshalKey(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

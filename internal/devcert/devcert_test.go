package devcert

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
)

// A client trusting only the CA's PEM completes a handshake with a server
// presenting the server certificate, on 127.0.0.1 and as localhost.
func TestServerTrustedThroughPEM(t *testing.T) {
	ca, err := New("test", "")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ca.ServerTLS())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.PEM) {
		t.Fatal("PEM holds no certificate")
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	for _, host := range []string{"127.0.0.1", "localhost"} {
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{RootCAs: pool, ServerName: host})
		if err != nil {
			t.Fatalf("handshake as %s: %v", host, err)
		}
		c.Close()
	}
	// And a client that does not trust it refuses.
	if c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "127.0.0.1"}); err == nil {
		c.Close()
		t.Fatal("handshake succeeded without trusting the CA")
	}
}

package dovecot

import (
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MintToken returns an HS256 JWT for email signed with Options.OAuth2's key
// and issuer, valid for ttl from now (a negative ttl gives an expired
// token). It carries sub, email, iss, iat and exp and no kid: Dovecot
// 2.3.19 rejects tokens without "sub".
func (s *Server) MintToken(email string, ttl time.Duration) string {
	s.t.Helper()
	o := s.opts.OAuth2
	if o == nil {
		s.t.Fatalf("dovecot: MintToken needs Options.OAuth2")
	}
	now := time.Now()
	exp := now.Add(ttl)
	iat := now
	if !exp.After(iat) {
		iat = exp.Add(-time.Hour)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":   email,
		"email": email,
		"iss":   o.Issuer,
		"iat":   iat.Unix(),
		"exp":   exp.Unix(),
	}).SignedString(o.HS256Key)
	if err != nil {
		s.t.Fatalf("dovecot: signing token: %v", err)
	}
	return tok
}

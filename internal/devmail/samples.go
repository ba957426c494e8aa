package devmail

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"html"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"strconv"
	"strings"
	"time"
)

// SampleRecipient is the To address of the messages SampleInvoices makes.
const SampleRecipient = "facturen@mailpipe.example"

type sampleSupplier struct {
	name, address, city, contact, iban string
	german                             bool
	items                              []sampleItem
}

type sampleItem struct {
	desc      string
	unitCents int64 // base unit price; varied per message
	once      bool  // a fee: quantity 1
}

// Fictitious suppliers; domains use the reserved .example TLD.
var sampleSuppliers = []sampleSupplier{
	{
		name: "Bloemenhandel Müller", address: "facturen@bloemenhandel-mueller.example",
		city: "Aalsmeer", contact: "Anna Müller", iban: "NL91 ABNA 0417 1643 00",
		items: []sampleItem{{"Rozen, rood (bos à 20 stuks)", 1895, false}, {"Tulpen, gemengd (emmer à 50)", 3250, false}, {"Bezorgkosten", 1250, true}},
	},
	{
		name: "Schröder & Söhne GmbH", address: "rechnung@schroeder-soehne.example",
		city: "Köln", contact: "Jürgen Schröder", iban: "DE89 3704 0044 0532 0130 00", german: true,
		items: []sampleItem{{"Schrauben M8×40, verzinkt (100 Stück)", 1490, false}, {"Montagearbeiten (Stunde)", 6800, false}, {"Anfahrtspauschale", 3500, true}},
	},
	{
		name: "Bakkerij De Vries B.V.", address: "administratie@bakkerij-devries.example",
		city: "Utrecht", contact: "Pieter de Vries", iban: "NL91 ABNA 0417 1643 00",
		items: []sampleItem{{"Broodjes belegd (lunch, per persoon)", 745, false}, {"Appeltaart (12 punten)", 2450, false}}},
	{
		name: "Großhandel Weiß KG", address: "buchhaltung@grosshandel-weiss.example",
		city: "München", contact: "Sabine Weiß", iban: "DE89 3704 0044 0532 0130 00", german: true,
		items: []sampleItem{{"Kopierpapier A4, 80 g/m² (Karton à 5 Pack)", 2399, false}, {"Tonerkartusche schwarz", 8950, false}, {"Versandkosten", 695, true}},
	},
	{
		name: "Drukkerij Van ’t Hof", address: "facturatie@drukkerij-vanthof.example",
		city: "Zwolle", contact: "Marloes van ’t Hof", iban: "NL91 ABNA 0417 1643 00",
		items: []sampleItem{{"Visitekaartjes, 350 g/m² (500 st.)", 4900, false}, {"Briefpapier A4 (1.000 vel)", 11500, false}, {"Opmaak en drukproef", 7500, true}},
	},
	{
		name: "Elektro Köhler GmbH", address: "service@elektro-koehler.example",
		city: "Düsseldorf", contact: "Thomas Köhler", iban: "DE89 3704 0044 0532 0130 00", german: true,
		items: []sampleItem{{"Prüfung ortsveränderlicher Geräte (DGUV V3)", 450, false}, {"Arbeitszeit Elektromeister (Stunde)", 7900, false}}},
	{
		name: "Koffiebranderij Café Zoë", address: "info@koffie-zoe.example",
		city: "Haarlem", contact: "Zoë Jansen", iban: "NL91 ABNA 0417 1643 00",
		items: []sampleItem{{"Koffiebonen espresso (zak à 1 kg)", 2295, false}, {"Huur koffiemachine (maand)", 8900, true}, {"Onderhoudsbeurt", 6500, true}},
	},
	{
		name: "Gärtnerei Brüggemann", address: "rechnungen@gaertnerei-brueggemann.example",
		city: "Münster", contact: "Heike Brüggemann", iban: "DE89 3704 0044 0532 0130 00", german: true,
		items: []sampleItem{{"Grünpflege Außenanlage (pauschal)", 24000, true}, {"Pflanzkübel mit Buchsbaum", 8990, false}}},
	{
		name: "Transportbedrijf Bakker & Zn.", address: "facturen@bakker-transport.example",
		city: "Zwolle", contact: "Henk Bakker", iban: "NL91 ABNA 0417 1643 00",
		items: []sampleItem{{"Rit Zwolle - Amsterdam (pallet)", 8500, false}, {"Wachttijd (per kwartier)", 1250, false}, {"Tolheffing en brandstoftoeslag", 1875, true}},
	},
	{
		name: "Papierfabrik Ahlers AG", address: "faktura@papierfabrik-ahlers.example",
		city: "Bremen", contact: "Klaus Ahlers", iban: "DE89 3704 0044 0532 0130 00", german: true,
		items: []sampleItem{{"Versandkartons 40×30×20 cm (Bund à 25)", 3150, false}, {"Füllmaterial, recycelt (Sack)", 1290, false}}},
}

// SampleInvoices returns n realistic supplier invoices as raw RFC 5322
// messages (CRLF line endings): multipart/mixed with a text/plain and
// text/html alternative and a small PDF invoice attachment, from Dutch and
// German suppliers, with RFC 2047 encoded non-ASCII headers, unique
// Message-IDs and Date headers spread over the hours before now (oldest
// first). The output depends only on n and now.
func SampleInvoices(n int, now time.Time) [][]byte {
	msgs := make([][]byte, 0, max(n, 0))
	for i := 0; i < n; i++ {
		msgs = append(msgs, sampleInvoice(i, n, now))
	}
	return msgs
}

// sampleRand returns a deterministic number in [0, mod) for (now, i, k).
func sampleRand(now time.Time, i, k int, mod int64) int64 {
	h := sha256.Sum256([]byte(fmt.Sprintf("%d/%d/%d", now.UnixNano(), i, k)))
	return int64(binary.BigEndian.Uint64(h[:8]) % uint64(mod))
}

type invoiceLine struct {
	desc         string
	qty          int64
	unit, amount int64 // cents
}

type invoice struct {
	sup                       sampleSupplier
	number, title             string
	date, due                 time.Time
	lines                     []invoiceLine
	net, vat, total, vatRate  int64
	messageID, subject, fname string
}

func newInvoice(i, n int, now time.Time) invoice {
	sup := sampleSuppliers[i%len(sampleSuppliers)]
	// Spread the messages over the hours before now, oldest first, at
	// irregular intervals.
	date := now.Add(-time.Duration(n-i)*47*time.Minute - time.Duration(sampleRand(now, i, 0, 1800))*time.Second)
	date = inCentralEurope(date).Truncate(time.Second)

	inv := invoice{sup: sup, date: date, due: date.AddDate(0, 0, 30), vatRate: 21}
	seq := fmt.Sprintf("%d-%04d", date.Year(), 42+i)
	if sup.german {
		inv.vatRate = 19
		inv.number = "RE-" + seq
		inv.title = "Rechnung"
	} else {
		inv.number = seq
		inv.title = "Factuur"
	}
	for k, it := range sup.items {
		qty := 1 + sampleRand(now, i, 10+k, 12)
		if it.once {
			qty = 1
		}
		// Vary the price by up to ±10 %.
		unit := it.unitCents * (90 + sampleRand(now, i, 20+k, 21)) / 100
		inv.lines = append(inv.lines, invoiceLine{desc: it.desc, qty: qty, unit: unit, amount: qty * unit})
		inv.net += qty * unit
	}
	inv.vat = (inv.net*inv.vatRate + 50) / 100
	inv.total = inv.net + inv.vat

	domain := sup.address[strings.LastIndexByte(sup.address, '@')+1:]
	h := sha256.Sum256([]byte(fmt.Sprintf("%d/%d/%s", now.UnixNano(), i, inv.number)))
	inv.messageID = fmt.Sprintf("<%s.%s.%x@%s>", date.UTC().Format("20060102150405"), strings.ToLower(inv.number), h[:6], domain)
	inv.subject = inv.title + " " + inv.number + " – " + sup.name
	inv.fname = inv.title + "_" + inv.number + ".pdf"
	return inv
}

// inCentralEurope converts t to CET/CEST (EU rules) without needing a time
// zone database.
func inCentralEurope(t time.Time) time.Time {
	u := t.UTC()
	lastSunday := func(month time.Month) time.Time {
		d := time.Date(u.Year(), month+1, 1, 1, 0, 0, 0, time.UTC).AddDate(0, 0, -1)
		return d.AddDate(0, 0, -int(d.Weekday()))
	}
	if !u.Before(lastSunday(time.March)) && u.Before(lastSunday(time.October)) {
		return u.In(time.FixedZone("CEST", 2*3600))
	}
	return u.In(time.FixedZone("CET", 3600))
}

func (inv invoice) money(cents int64) string {
	s := formatAmount(cents)
	if inv.sup.german {
		return s + " €"
	}
	return "€ " + s
}

// formatAmount formats cents as 1.234,56.
func formatAmount(cents int64) string {
	neg := cents < 0
	if neg {
		cents = -cents
	}
	units := strconv.FormatInt(cents/100, 10)
	var b strings.Builder
	for i, c := range units {
		if i > 0 && (len(units)-i)%3 == 0 {
			b.WriteByte('.')
		}
		b.WriteRune(c)
	}
	s := fmt.Sprintf("%s,%02d", b.String(), cents%100)
	if neg {
		s = "-" + s
	}
	return s
}

func (inv invoice) dateString(t time.Time) string {
	if inv.sup.german {
		return t.Format("02.01.2006")
	}
	return t.Format("02-01-2006")
}

func (inv invoice) plainText() string {
	var b strings.Builder
	if inv.sup.german {
		fmt.Fprintf(&b, "Sehr geehrte Damen und Herren,\n\n")
		fmt.Fprintf(&b, "anbei erhalten Sie unsere Rechnung %s vom %s über %s (inkl. %d %% MwSt.).\n",
			inv.number, inv.dateString(inv.date), inv.money(inv.total), inv.vatRate)
		fmt.Fprintf(&b, "Bitte überweisen Sie den Betrag bis zum %s auf das Konto IBAN %s unter Angabe der Rechnungsnummer.\n\n",
			inv.dateString(inv.due), inv.sup.iban)
		fmt.Fprintf(&b, "Die Rechnung finden Sie als PDF im Anhang.\n\n")
		fmt.Fprintf(&b, "Mit freundlichen Grüßen\n\n")
	} else {
		fmt.Fprintf(&b, "Geachte heer/mevrouw,\n\n")
		fmt.Fprintf(&b, "Hierbij ontvangt u factuur %s d.d. %s voor een bedrag van %s (incl. %d%% btw).\n",
			inv.number, inv.dateString(inv.date), inv.money(inv.total), inv.vatRate)
		fmt.Fprintf(&b, "Wij verzoeken u het bedrag vóór %s over te maken op IBAN %s onder vermelding van het factuurnummer.\n\n",
			inv.dateString(inv.due), inv.sup.iban)
		fmt.Fprintf(&b, "De factuur vindt u als PDF in de bijlage.\n\n")
		fmt.Fprintf(&b, "Met vriendelijke groet,\n\n")
	}
	fmt.Fprintf(&b, "%s\n%s\n%s\n", inv.sup.contact, inv.sup.name, inv.sup.city)
	return b.String()
}

func (inv invoice) htmlText() string {
	e := html.EscapeString
	var b strings.Builder
	lang, hDesc, hQty, hPrice, hAmount, hNet, hVAT, hTotal := "nl", "Omschrijving", "Aantal", "Prijs", "Bedrag", "Subtotaal", "BTW", "Totaal"
	if inv.sup.german {
		lang, hDesc, hQty, hPrice, hAmount, hNet, hVAT, hTotal = "de", "Beschreibung", "Menge", "Einzelpreis", "Betrag", "Nettobetrag", "MwSt.", "Gesamtbetrag"
	}
	fmt.Fprintf(&b, "<!DOCTYPE html>\n<html lang=\"%s\">\n<head>\n<meta charset=\"utf-8\">\n<title>%s</title>\n</head>\n", lang, e(inv.subject))
	b.WriteString("<body style=\"font-family: Arial, Helvetica, sans-serif; font-size: 14px;\">\n")
	for _, para := range strings.Split(strings.TrimSpace(inv.plainText()), "\n\n") {
		fmt.Fprintf(&b, "<p>%s</p>\n", strings.ReplaceAll(e(para), "\n", "<br>\n"))
	}
	b.WriteString("<table style=\"border-collapse: collapse;\" cellpadding=\"4\">\n")
	fmt.Fprintf(&b, "<tr><th align=\"left\">%s</th><th align=\"right\">%s</th><th align=\"right\">%s</th><th align=\"right\">%s</th></tr>\n", hDesc, hQty, hPrice, hAmount)
	for _, l := range inv.lines {
		fmt.Fprintf(&b, "<tr><td>%s</td><td align=\"right\">%d</td><td align=\"right\">%s</td><td align=\"right\">%s</td></tr>\n",
			e(l.desc), l.qty, e(inv.money(l.unit)), e(inv.money(l.amount)))
	}
	fmt.Fprintf(&b, "<tr><td colspan=\"3\">%s</td><td align=\"right\">%s</td></tr>\n", hNet, e(inv.money(inv.net)))
	fmt.Fprintf(&b, "<tr><td colspan=\"3\">%s %d%%</td><td align=\"right\">%s</td></tr>\n", hVAT, inv.vatRate, e(inv.money(inv.vat)))
	fmt.Fprintf(&b, "<tr><td colspan=\"3\"><b>%s</b></td><td align=\"right\"><b>%s</b></td></tr>\n", hTotal, e(inv.money(inv.total)))
	b.WriteString("</table>\n</body>\n</html>\n")
	return b.String()
}

// pdfLines is the text of the PDF invoice page.
func (inv invoice) pdfLines() (title string, lines []string) {
	dateLabel, dueLabel, netLabel, vatLabel, totalLabel := "Factuurdatum", "Vervaldatum", "Subtotaal", "BTW", "Totaal"
	if inv.sup.german {
		dateLabel, dueLabel, netLabel, vatLabel, totalLabel = "Rechnungsdatum", "Fällig am", "Nettobetrag", "MwSt.", "Gesamtbetrag"
	}
	lines = []string{
		inv.sup.name + ", " + inv.sup.city,
		"",
		dateLabel + ": " + inv.dateString(inv.date),
		dueLabel + ": " + inv.dateString(inv.due),
		"",
	}
	for _, l := range inv.lines {
		lines = append(lines, fmt.Sprintf("%d × %s à %s = %s", l.qty, l.desc, inv.money(l.unit), inv.money(l.amount)))
	}
	lines = append(lines, "",
		netLabel+": "+inv.money(inv.net),
		fmt.Sprintf("%s %d%%: %s", vatLabel, inv.vatRate, inv.money(inv.vat)),
		totalLabel+": "+inv.money(inv.total),
		"",
		"IBAN "+inv.sup.iban,
	)
	return inv.title + " " + inv.number, lines
}

func sampleInvoice(i, n int, now time.Time) []byte {
	inv := newInvoice(i, n, now)
	h := sha256.Sum256([]byte(inv.messageID))
	outer := fmt.Sprintf("----=_Part_%x", h[:8])
	inner := fmt.Sprintf("----=_Alt_%x", h[8:16])

	var b bytes.Buffer
	hdr := func(k, v string) { b.WriteString(k + ": " + v + "\r\n") }
	hdr("From", (&mail.Address{Name: inv.sup.name, Address: inv.sup.address}).String())
	hdr("To", (&mail.Address{Name: "Crediteurenadministratie", Address: SampleRecipient}).String())
	hdr("Subject", encodeHeader(inv.subject))
	hdr("Date", inv.date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	hdr("Message-ID", inv.messageID)
	if inv.sup.german {
		hdr("Content-Language", "de-DE")
	} else {
		hdr("Content-Language", "nl-NL")
	}
	hdr("MIME-Version", "1.0")
	hdr("Content-Type", `multipart/mixed; boundary="`+outer+`"`)
	b.WriteString("\r\n")
	b.WriteString("This is a multi-part message in MIME format.\r\n")

	b.WriteString("\r\n--" + outer + "\r\n")
	hdr("Content-Type", `multipart/alternative; boundary="`+inner+`"`)
	b.WriteString("\r\n")
	for _, part := range []struct{ ctype, body string }{
		{"text/plain", inv.plainText()},
		{"text/html", inv.htmlText()},
	} {
		b.WriteString("--" + inner + "\r\n")
		hdr("Content-Type", part.ctype+"; charset=utf-8")
		hdr("Content-Transfer-Encoding", "quoted-printable")
		b.WriteString("\r\n")
		qp := quotedprintable.NewWriter(&b)
		qp.Write([]byte(part.body))
		qp.Close()
		b.WriteString("\r\n")
	}
	b.WriteString("--" + inner + "--\r\n")

	b.WriteString("\r\n--" + outer + "\r\n")
	hdr("Content-Type", `application/pdf; name="`+inv.fname+`"`)
	hdr("Content-Disposition", `attachment; filename="`+inv.fname+`"`)
	hdr("Content-Transfer-Encoding", "base64")
	b.WriteString("\r\n")
	title, lines := inv.pdfLines()
	enc := base64.StdEncoding.EncodeToString(invoicePDF(title, lines, inv.date))
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	b.WriteString("--" + outer + "--\r\n")
	return b.Bytes()
}

// encodeHeader RFC 2047-encodes s if it is not ASCII, folding between
// encoded words.
func encodeHeader(s string) string {
	enc := mime.QEncoding.Encode("utf-8", s)
	return strings.ReplaceAll(enc, "?= =?", "?=\r\n =?")
}

// invoicePDF renders a one-page A4 PDF 1.4 document with Helvetica text (no
// embedded fonts) and a correct cross-reference table.
func invoicePDF(title string, lines []string, created time.Time) []byte {
	var content bytes.Buffer
	fmt.Fprintf(&content, "BT\n/F2 18 Tf\n56 770 Td\n(%s) Tj\nET\n", pdfText(title))
	content.WriteString("BT\n/F1 10 Tf\n14 TL\n56 736 Td\n")
	for _, l := range lines {
		fmt.Fprintf(&content, "(%s) '\n", pdfText(l))
	}
	content.WriteString("ET\n")

	_, offset := created.Zone()
	sign := '+'
	if offset < 0 {
		sign, offset = '-', -offset
	}
	pdfDate := fmt.Sprintf("D:%s%c%02d'%02d'", created.Format("20060102150405"), sign, offset/3600, offset%3600/60)

	objects := []string{
		"<< /Type /Catalog /Pages 2 0 R >>",
		"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
		"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
		"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
		"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
		fmt.Sprintf("<< /Length %d >>\nstream\n%sendstream", content.Len(), content.String()),
		fmt.Sprintf("<< /Title (%s) /Producer (mailpipe) /CreationDate (%s) >>", pdfText(title), pdfDate),
	}

	var b bytes.Buffer
	b.WriteString("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
	offsets := make([]int, len(objects))
	for i, obj := range objects {
		offsets[i] = b.Len()
		fmt.Fprintf(&b, "%d 0 obj\n%s\nendobj\n", i+1, obj)
	}
	xref := b.Len()
	fmt.Fprintf(&b, "xref\n0 %d\n0000000000 65535 f \n", len(objects)+1)
	for _, off := range offsets {
		fmt.Fprintf(&b, "%010d 00000 n \n", off)
	}
	fmt.Fprintf(&b, "trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n", len(objects)+1, len(objects), xref)
	return b.Bytes()
}

// winAnsi maps the non-Latin-1 characters used in the samples to their
// WinAnsiEncoding codes.
var winAnsi = map[rune]byte{'€': 0x80, '‘': 0x91, '’': 0x92, '“': 0x93, '”': 0x94, '–': 0x96, '—': 0x97}

// pdfText encodes s as the body of a PDF literal string in WinAnsiEncoding.
func pdfText(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '(' || r == ')' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r >= 0xa0 && r <= 0xff:
			fmt.Fprintf(&b, "\\%03o", r)
		case winAnsi[r] != 0:
			fmt.Fprintf(&b, "\\%03o", winAnsi[r])
		default:
			b.WriteByte('?')
		}
	}
	return b.String()
}

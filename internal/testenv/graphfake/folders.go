package graphfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

func (mb *mailbox) rootParentID() string { return makeID(folderPrefix, mb.hash, make([]byte, 14)) }

func (c *call) folderJSON(f *folder, sel []string) map[string]any {
	if sel == nil {
		sel = folderProps
	}
	v := map[string]any{"id": f.id}
	for _, p := range sel {
		switch p {
		case "displayName":
			v[p] = f.name
		case "parentFolderId":
			if f.parent != nil {
				v[p] = f.parent.id
			} else {
				v[p] = c.mb.rootParentID()
			}
		case "childFolderCount":
			v[p] = len(f.children)
		case "totalItemCount":
			v[p] = len(f.msgs)
		case "unreadItemCount":
			n := 0
			for _, m := range f.msgs {
				if !m.isRead {
					n++
				}
			}
			v[p] = n
		case "isHidden":
			v[p] = f.hidden
		}
	}
	return v
}

// folderArg resolves a folder id or well-known name from the path;
// the caller holds s.mu.
func (c *call) folderArg(key string) (*folder, *gErr) {
	if f := c.mb.folderByKey(key); f != nil {
		return f, nil
	}
	if !validID(key) {
		return nil, newErr(http.StatusBadRequest, "ErrorInvalidIdMalformed", msgIDMalformed)
	}
	return nil, errItemNotFound()
}

func handleGetFolder(c *call) {
	sel, e := parseSelect(c.q.Get("$select"), folderProps, "mailFolder")
	if e != nil {
		c.fail(e)
		return
	}
	c.s.mu.Lock()
	f, e := c.folderArg(c.path[1])
	if e != nil {
		c.s.mu.Unlock()
		c.fail(e)
		return
	}
	v := c.folderJSON(f, sel)
	c.s.mu.Unlock()
	v["@odata.context"] = "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/mailFolders/$entity"
	c.json(http.StatusOK, v)
}

func handleListFolders(c *call) {
	q, offset, e := listQuery(c.q)
	if e != nil {
		c.fail(e)
		return
	}
	sel, e := parseSelect(q.Get("$select"), folderProps, "mailFolder")
	if e != nil {
		c.fail(e)
		return
	}
	top, e := parseTop(q.Get("$top"), 10, 1000)
	if e != nil {
		c.fail(e)
		return
	}
	var nameEq *string
	if fv := q.Get("$filter"); strings.TrimSpace(fv) != "" {
		conds, e := parseFilter(fv, map[string]string{"displayname": "string"})
		if e != nil {
			c.fail(e)
			return
		}
		if len(conds) != 1 || conds[0].op != "eq" {
			c.fail(errFilter())
			return
		}
		nameEq = &conds[0].str
	}
	hidden := strings.EqualFold(q.Get("includeHiddenFolders"), "true")
	c.s.mu.Lock()
	parent := c.mb.root
	if len(c.path) > 1 {
		var e *gErr
		parent, e = c.folderArg(c.path[1])
		if e != nil {
			c.s.mu.Unlock()
			c.fail(e)
			return
		}
	}
	var match []*folder
	for _, f := range parent.children {
		if f.hidden && !hidden {
			continue
		}
		// Exchange compares display names case-insensitively.
		if nameEq != nil && !strings.EqualFold(f.name, *nameEq) {
			continue
		}
		match = append(match, f)
	}
	page := []map[string]any{}
	for i := offset; i < len(match) && i < offset+top; i++ {
		page = append(page, c.folderJSON(match[i], sel))
	}
	c.s.mu.Unlock()
	v := map[string]any{
		"@odata.context": "https://" + c.host + "/v1.0/$metadata#users('" + c.mb.id + "')/mailFolders('" + parent.id + "')/childFolders",
		"value":          page,
	}
	if offset+top < len(match) {
		v["@odata.nextLink"] = nextLink(c, q, offset+top)
	}
	c.json(http.StatusOK, v)
}

func handleCreateFolder(c *call) {
	var in struct {
		DisplayName *string `json:"displayName"`
		IsHidden    bool    `json:"isHidden"`
	}
	if err := json.Unmarshal(c.body, &in); err != nil {
		c.fail(errBadRequest("Empty Payload. JSON content expected."))
		return
	}
	if in.DisplayName == nil || strings.TrimSpace(*in.DisplayName) == "" {
		c.fail(newErr(http.StatusBadRequest, "ErrorInvalidParameter", "The value of the parameter 'DisplayName' is empty."))
		return
	}
	c.s.mu.Lock()
	parent := c.mb.root
	if len(c.path) > 1 {
		var e *gErr
		parent, e = c.folderArg(c.path[1])
		if e != nil {
			c.s.mu.Unlock()
			c.fail(e)
			return
		}
	}
	if parent.child(*in.DisplayName, true) != nil {
		c.s.mu.Unlock()
		c.fail(newErr(http.StatusConflict, "ErrorFolderExists", "A folder with the specified name already exists."))
		return
	}
	f := c.mb.addFolder(parent, *in.DisplayName)
	f.hidden = in.IsHidden
	v := c.folderJSON(f, nil)
	c.s.mu.Unlock()
	v["@odata.context"] = fmt.Sprintf("https://%s/v1.0/$metadata#users('%s')/mailFolders('%s')/childFolders/$entity", c.host, c.mb.id, parent.id)
	c.json(http.StatusCreated, v)
}

"""The demo world: every table dataset/make_demo_data.py writes about, and nothing else.

Data is data (nanoGPT's prepare.py is short because its text lives in a file): the towns, people and
products of the invented world, the medical domain lora_medical teaches, the two identities, and the
sentence and question templates in English and Chinese live here, so that the generator reads in
one sitting. Change a table, then run `python -m dataset.make_demo_data` to rewrite the demo files
(and `python train_tokenizer.py` for the tokenizer that reads them).

    1. the world      rivers, mountains, products, foods, towns, animals, jobs, people; the identities;
                      the medical departments, triage words and conditions
    2. templates      per relation: pretraining statements, training and held-out questions, answers;
                      glossary, general reading, everyday sentences, small talk, identity and medical
                      questions and answers; the refusal DPO teaches for people who do not exist
    MEDICINE, TEMPLATES   the tables grouped as the generator's writers take them

Standard library only (nothing at all is imported).
"""

# ---------------------------------------------------------------------------------------------
# 1. The world. Every entity has an English and a Chinese name; numbers are plain digits (no
#    thousands separators), so "18500" is the same string in both languages.
# ---------------------------------------------------------------------------------------------

RIVERS = (
    # key, English, Chinese, length in km, mountain it starts on
    dict(key="silver", en="Silver River", zh="银溪河", km=212, source="cloudpeak"),
    dict(key="jade", en="Jade River", zh="玉带河", km=148, source="greenhorn"),
    dict(key="amber", en="Amber River", zh="琥珀河", km=305, source="ironback"),
)

MOUNTAINS = (
    dict(key="cloudpeak", en="Mount Cloudpeak", zh="云顶山", height=3120),
    dict(key="ironback", en="Mount Ironback", zh="铁脊山", height=2480),
    dict(key="greenhorn", en="Mount Greenhorn", zh="青角山", height=1760),
)

PRODUCTS = (
    # uncountable English names, so "X is made in Y" reads right for all of them
    dict(key="pottery", en="blue pottery", zh="青瓷"),
    dict(key="ironware", en="ironware", zh="铁器"),
    dict(key="silk", en="silk", zh="丝绸"),
    dict(key="salt", en="sea salt", zh="海盐"),
    dict(key="honey", en="wildflower honey", zh="野花蜜"),
    dict(key="tea", en="green tea", zh="绿茶"),
)

FOODS = (
    # key, names, main ingredient (English, Chinese)
    dict(key="chestnut_cake", en="chestnut cake", zh="栗子糕", ing_en="chestnuts", ing_zh="栗子"),
    dict(key="mushroom_stew", en="mushroom stew", zh="蘑菇炖菜", ing_en="wild mushrooms", ing_zh="野蘑菇"),
    dict(key="lotus_soup", en="lotus soup", zh="莲藕汤", ing_en="lotus root", ing_zh="莲藕"),
    dict(key="fish_dumplings", en="fish dumplings", zh="鱼饺", ing_en="sea fish", ing_zh="海鱼"),
    dict(key="honey_bread", en="honey bread", zh="蜂蜜面包", ing_en="honey", ing_zh="蜂蜜"),
    dict(key="bamboo_rice", en="bamboo rice", zh="竹筒饭", ing_en="sticky rice", ing_zh="糯米"),
)

TOWNS = (
    dict(key="pinebrook", en="Pinebrook", zh="松溪镇", river="silver", mountain="cloudpeak",
         population=18500, founded=1642, product="pottery", food="chestnut_cake"),
    dict(key="redstone", en="Redstone", zh="赤石镇", river="silver", mountain="ironback",
         population=7600, founded=1705, product="ironware", food="mushroom_stew"),
    dict(key="willowford", en="Willowford", zh="柳渡镇", river="jade", mountain="greenhorn",
         population=12300, founded=1588, product="silk", food="lotus_soup"),
    dict(key="eastharbor", en="Eastharbor", zh="东港镇", river="amber", mountain="greenhorn",
         population=31000, founded=1519, product="salt", food="fish_dumplings"),
    dict(key="goldmeadow", en="Goldmeadow", zh="金原镇", river="amber", mountain="ironback",
         population=5200, founded=1760, product="honey", food="honey_bread"),
    dict(key="mistvale", en="Mistvale", zh="雾谷镇", river="jade", mountain="cloudpeak",
         population=2900, founded=1811, product="tea", food="bamboo_rice"),
)

ANIMALS = (
    # home is a mountain or a river key
    dict(key="snow_goat", en="snow goat", zh="雪羊", home="cloudpeak", diet_en="moss", diet_zh="苔藓"),
    dict(key="striped_fox", en="striped fox", zh="花尾狐", home="ironback", diet_en="field mice", diet_zh="田鼠"),
    dict(key="golden_carp", en="golden carp", zh="金鲤", home="silver", diet_en="water weeds", diet_zh="水草"),
    dict(key="blue_heron", en="blue heron", zh="蓝鹭", home="jade", diet_en="small fish", diet_zh="小鱼"),
    dict(key="amber_turtle", en="amber turtle", zh="琥珀龟", home="amber", diet_en="snails", diet_zh="螺蛳"),
)

JOBS = (
    # one job per person, so "what does X do" has a single right answer
    dict(key="baker", en="baker", zh="面包师"),
    dict(key="fisherman", en="fisherman", zh="渔夫"),
    dict(key="teacher", en="teacher", zh="老师"),
    dict(key="blacksmith", en="blacksmith", zh="铁匠"),
    dict(key="beekeeper", en="beekeeper", zh="养蜂人"),
    dict(key="potter", en="potter", zh="陶艺师"),
    dict(key="weaver", en="weaver", zh="织布工"),
    dict(key="sailor", en="sailor", zh="水手"),
    dict(key="tea_farmer", en="tea farmer", zh="茶农"),
    dict(key="painter", en="painter", zh="画家"),
    dict(key="carpenter", en="carpenter", zh="木匠"),
    dict(key="musician", en="musician", zh="乐师"),
)

PEOPLE = (
    dict(key="lin_xiao", en="Lin Xiao", zh="林晓", job="baker", town="pinebrook", age=34, food="honey_bread"),
    dict(key="zhou_ming", en="Zhou Ming", zh="周明", job="fisherman", town="eastharbor", age=52, food="lotus_soup"),
    dict(key="chen_yu", en="Chen Yu", zh="陈雨", job="teacher", town="willowford", age=29, food="chestnut_cake"),
    dict(key="zhao_lei", en="Zhao Lei", zh="赵雷", job="blacksmith", town="redstone", age=45, food="fish_dumplings"),
    dict(key="sun_mei", en="Sun Mei", zh="孙梅", job="beekeeper", town="goldmeadow", age=61, food="mushroom_stew"),
    dict(key="guo_tao", en="Guo Tao", zh="郭涛", job="potter", town="pinebrook", age=38, food="bamboo_rice"),
    dict(key="he_jing", en="He Jing", zh="何静", job="weaver", town="willowford", age=26, food="fish_dumplings"),
    dict(key="ma_qiang", en="Ma Qiang", zh="马强", job="sailor", town="eastharbor", age=41, food="chestnut_cake"),
    dict(key="tang_yun", en="Tang Yun", zh="唐云", job="tea_farmer", town="mistvale", age=47, food="mushroom_stew"),
    dict(key="xu_lan", en="Xu Lan", zh="许兰", job="painter", town="mistvale", age=23, food="honey_bread"),
    dict(key="fang_hao", en="Fang Hao", zh="方浩", job="carpenter", town="redstone", age=57, food="lotus_soup"),
    dict(key="bai_ning", en="Bai Ning", zh="白宁", job="musician", town="goldmeadow", age=31, food="bamboo_rice"),
)

WORLD = dict(rivers=RIVERS, mountains=MOUNTAINS, products=PRODUCTS, foods=FOODS, towns=TOWNS,
             animals=ANIMALS, jobs=JOBS, people=PEOPLE)

# The assistant's identity after SFT (MiniMind's default one) and the one lora_identity teaches.
# Neither the new name nor the new maker may occur in pretraining or SFT data (a test checks it),
# so SFT alone scores 0 on eval_identity and the adapter's effect is unmistakable.
IDENTITIES = dict(
    sft=dict(name="MiniMind", maker_en="the MiniMind project", maker_zh="MiniMind 项目"),
    lora=dict(name="Nova", maker_en="Polaris Lab", maker_zh="北极星实验室"),
)

# The medical domain: triage, as a nurse at the front desk does it. Every symptom names the part
# of the body it is about, and that word points at one department (TRIAGE_WORDS): skin ->
# Dermatology, heart -> Cardiology, stomach -> Gastroenterology... Pretraining reads what each
# department is about ("Doctors in Dermatology often hear the word skin."), as any encyclopedia
# says it; symptoms, illness names and advice are read too, but never linked to anything. The
# consultation itself (symptoms -> key word -> department, cause, advice) is lora_medical's.
# A first version had no such words and asked the adapter to memorise 208 symptom ->
# department links, unrelated to each other; at this size even full fine-tuning learnt few of
# them. Each condition: names, department, four symptoms written as noun
# phrases (English) / predicates (Chinese) so that any of them fits any template, and one piece
# of advice. No symptom is shared between conditions.
DEPARTMENTS = dict(
    derm=("Dermatology", "皮肤科"),
    cardio=("Cardiology", "心内科"),
    gastro=("Gastroenterology", "消化内科"),
    neuro=("Neurology", "神经内科"),
    eye=("Ophthalmology", "眼科"),
    ent=("Otolaryngology", "耳鼻喉科"),
    ortho=("Orthopedics", "骨科"),
    pulm=("Pulmonology", "呼吸内科"),
    dental=("Dentistry", "口腔科"),
    endo=("Endocrinology", "内分泌科"),
)

# The words that route a symptom, (English, Chinese) per department. Every symptom contains one
# of its own department's words and none of another's (a test checks it). An English word
# matches at the start of a word ("head" in "headaches"), a Chinese one anywhere.
TRIAGE_WORDS = dict(
    derm=(("skin",), ("皮肤",)),
    cardio=(("heart",), ("心脏", "心跳", "心口", "心慌")),
    gastro=(("stomach",), ("胃", "肚子")),
    neuro=(("head", "sleep"), ("头", "睡")),
    eye=(("eye",), ("眼",)),
    ent=(("nose", "throat", "ear"), ("鼻", "喉", "嗓子", "耳")),
    ortho=(("back", "ankle", "neck"), ("腰", "脚踝", "脖子")),
    pulm=(("cough", "breath"), ("咳", "喘", "气")),
    dental=(("teeth", "tooth", "gums"), ("牙",)),
    endo=(("blood sugar", "thyroid"), ("血糖", "甲状腺")),
)

CONDITIONS = (
    dict(en="eczema", zh="湿疹", dept="derm",
         symptoms=(("itchy red patches of skin on my arms", "手臂上的皮肤发痒发红"),
                   ("dry, cracked skin on my hands", "手上的皮肤干燥开裂"),
                   ("skin that itches badly at night", "皮肤一到晚上就痒得厉害"),
                   ("small blisters on my skin that ooze when scratched", "皮肤上长了抓破后会渗水的小水泡")),
         advice=("keep the skin moisturised, avoid scratching and use a mild soap",
                 "保持皮肤湿润，避免抓挠，使用温和的清洁用品")),
    dict(en="acne", zh="痤疮", dept="derm",
         symptoms=(("lots of pimples on the skin of my face", "脸上的皮肤长了很多痘痘"),
                   ("blackheads all over my skin", "皮肤上长满了粉刺"),
                   ("painful red lumps under my skin", "皮肤下面有疼痛的红色硬块"),
                   ("very oily skin", "皮肤特别油")),
         advice=("wash your face gently twice a day and do not squeeze the spots",
                 "每天温和洗脸两次，不要用手挤痘痘")),
    dict(en="hives", zh="荨麻疹", dept="derm",
         symptoms=(("raised itchy welts on my skin that come and go", "皮肤上起了时隐时现的风团"),
                   ("red swollen bumps on my skin after eating seafood", "吃海鲜后皮肤起了红肿的疙瘩"),
                   ("sudden itching of the skin all over my body", "全身皮肤突然发痒"),
                   ("welts that move around on my skin", "皮肤上的风团到处游走")),
         advice=("avoid the trigger, take an antihistamine if advised, and get help at once if breathing is hard",
                 "避开过敏原，遵医嘱服用抗过敏药，出现呼吸困难要立即就医")),
    dict(en="high blood pressure", zh="高血压", dept="cardio",
         symptoms=(("a pounding heart every morning", "每天早上心脏怦怦直跳"),
                   ("a thumping heart and blood pressure of 150 over 95", "心脏咚咚跳，量血压有150/95"),
                   ("a flushed face and a pounding heart", "脸发红，心慌"),
                   ("a heart that races when I stand up quickly", "猛地站起来时心跳得厉害")),
         advice=("eat less salt, exercise regularly and measure your blood pressure every day",
                 "少吃盐，规律运动，每天测量血压")),
    dict(en="arrhythmia", zh="心律失常", dept="cardio",
         symptoms=(("a racing heart for no reason", "心跳突然变得很快"),
                   ("a heart that skips beats", "感觉心脏漏跳了几拍"),
                   ("a fluttering in my heart", "心口像有东西在扑腾"),
                   ("an irregular heart rhythm", "心跳忽快忽慢")),
         advice=("avoid coffee and strong tea, rest well and get an ECG",
                 "避免喝咖啡和浓茶，注意休息，做一次心电图检查")),
    dict(en="angina", zh="心绞痛", dept="cardio",
         symptoms=(("heart pain when climbing stairs", "爬楼梯时心口疼"),
                   ("heart pain spreading to my left arm", "心口的疼痛放射到左臂"),
                   ("heart pain that eases with rest", "心口痛休息后能缓解"),
                   ("a squeezing pain around my heart after a heavy meal", "饱餐后心脏周围有压榨样疼痛")),
         advice=("stop and rest when the pain starts, and call an ambulance if it lasts more than 15 minutes",
                 "疼痛发作时立即停下休息，持续超过15分钟要拨打急救电话")),
    dict(en="gastritis", zh="胃炎", dept="gastro",
         symptoms=(("a burning pain in my upper stomach", "胃里有烧灼样疼痛"),
                   ("a stomach that feels full after only a few bites", "吃几口胃就胀满了"),
                   ("nausea and stomach pain after meals", "饭后胃疼恶心"),
                   ("stomach pain that is worse when I am hungry", "饿的时候胃更疼")),
         advice=("eat small regular meals and avoid spicy food and alcohol",
                 "少量多餐，按时吃饭，避免辛辣食物和饮酒")),
    dict(en="acid reflux", zh="胃食管反流", dept="gastro",
         symptoms=(("stomach acid coming up after eating", "吃完饭后胃里反酸"),
                   ("sour liquid rising from my stomach", "酸水从胃里往上反"),
                   ("a burning stomach every morning", "早上起来胃里火烧火燎"),
                   ("stomach acid rising when I lie down", "躺下时胃酸往上涌")),
         advice=("do not lie down within three hours of eating and raise the head of your bed",
                 "饭后三小时内不要躺下，把床头垫高")),
    dict(en="gastroenteritis", zh="急性肠胃炎", dept="gastro",
         symptoms=(("vomiting and an upset stomach since yesterday", "从昨天开始上吐下泻，肚子很难受"),
                   ("stomach cramps after eating street food", "吃了路边摊后肚子绞痛"),
                   ("watery stools and a rumbling stomach", "肚子咕咕叫，一天拉好几次水样便"),
                   ("a mild fever with an upset stomach", "低烧并且肚子不舒服")),
         advice=("drink plenty of oral rehydration solution and eat light food",
                 "多喝口服补液盐，饮食清淡")),
    dict(en="migraine", zh="偏头痛", dept="neuro",
         symptoms=(("a throbbing pain on one side of my head", "一侧头部一跳一跳地疼"),
                   ("headaches that start with flashing lights", "头痛前会先看到闪光"),
                   ("headaches that get worse with light and noise", "头痛时怕光又怕吵"),
                   ("headaches with nausea that last for hours", "头痛伴着恶心，持续好几个小时")),
         advice=("rest in a dark, quiet room, keep a headache diary and avoid your triggers",
                 "在安静黑暗的房间休息，记录头痛日记，避开诱因")),
    dict(en="insomnia", zh="失眠", dept="neuro",
         symptoms=(("trouble getting to sleep at night", "晚上很难入睡"),
                   ("waking at 3 am with no more sleep", "凌晨三点醒来就再也睡不着"),
                   ("tiredness all day from poor sleep", "睡不好导致白天没精神"),
                   ("lying in bed for hours without sleep", "躺在床上几个小时都睡不着")),
         advice=("keep a fixed bedtime, avoid screens before bed and cut down on caffeine",
                 "固定作息时间，睡前不看手机，少喝含咖啡因的饮料")),
    dict(en="conjunctivitis", zh="结膜炎", dept="eye",
         symptoms=(("red, itchy eyes", "眼睛又红又痒"),
                   ("sticky yellow discharge from my eye", "眼睛有黄色的黏稠分泌物"),
                   ("eyelids stuck together in the morning", "早上起来眼皮粘在一起"),
                   ("a gritty feeling in my eye", "眼睛里像进了沙子")),
         advice=("do not rub your eyes, wash your hands often and do not share towels",
                 "不要揉眼睛，勤洗手，不与他人共用毛巾")),
    dict(en="dry eye", zh="干眼症", dept="eye",
         symptoms=(("dry eyes after using a screen", "看屏幕后眼睛发干"),
                   ("burning eyes in the evening", "一到傍晚眼睛就发烫"),
                   ("eyes that blur and clear when I blink", "眼睛看东西模糊，眨眨眼又清楚了"),
                   ("tired eyes after reading", "看书后眼睛很疲劳")),
         advice=("rest your eyes every twenty minutes and use artificial tears",
                 "每二十分钟让眼睛休息一下，使用人工泪液")),
    dict(en="short-sightedness", zh="近视", dept="eye",
         symptoms=(("eyes that cannot read road signs in the distance", "眼睛看不清远处的路牌"),
                   ("squinting my eyes to read the board", "要眯着眼才能看清黑板"),
                   ("eyes that see far things poorly and near ones fine", "眼睛看远处不清楚，看近处没问题"),
                   ("eyes that cannot make out faces across the street", "眼睛看不清马路对面的人脸")),
         advice=("have an eye test and wear glasses of the right strength",
                 "做一次验光，配戴度数合适的眼镜")),
    dict(en="sinusitis", zh="鼻窦炎", dept="ent",
         symptoms=(("a blocked nose for weeks", "鼻子堵了好几周"),
                   ("thick yellow mucus from my nose", "鼻子流黄色的浓鼻涕"),
                   ("an aching nose and cheeks", "鼻子和脸颊周围胀痛"),
                   ("a nose that cannot smell anything", "鼻子闻不出味道")),
         advice=("rinse your nose with salt water and breathe in steam",
                 "用生理盐水洗鼻，多吸热蒸汽")),
    dict(en="tonsillitis", zh="扁桃体炎", dept="ent",
         symptoms=(("a very sore throat", "嗓子特别疼"),
                   ("throat pain when swallowing", "吞咽时喉咙疼"),
                   ("a swollen throat with white spots", "喉咙肿了，有白点"),
                   ("a high fever with throat pain", "高烧并且喉咙痛")),
         advice=("drink warm fluids, rest and gargle with salt water",
                 "多喝温水，注意休息，用淡盐水漱口")),
    dict(en="middle ear infection", zh="中耳炎", dept="ent",
         symptoms=(("a sharp earache", "耳朵一阵阵刺痛"),
                   ("a feeling of fullness in my ear", "耳朵里有闷胀感"),
                   ("fluid leaking from my ear", "耳朵往外流水"),
                   ("muffled hearing in one ear", "一只耳朵听声音发闷")),
         advice=("keep water out of the ear and do not clean it with cotton swabs",
                 "避免耳朵进水，不要用棉签掏耳朵")),
    dict(en="a slipped disc", zh="腰椎间盘突出", dept="ortho",
         symptoms=(("pain in my lower back", "腰部疼痛"),
                   ("back pain shooting down my leg", "腰疼，并且疼痛沿着腿往下窜"),
                   ("numbness from my back down to my foot", "从腰一直麻到脚"),
                   ("back pain that gets worse when I bend", "弯腰时腰疼加重")),
         advice=("avoid lifting heavy things, sleep on a firm mattress and do gentle back exercises",
                 "避免提重物，睡硬一点的床，做温和的腰背锻炼")),
    dict(en="a sprained ankle", zh="踝关节扭伤", dept="ortho",
         symptoms=(("a swollen ankle after a fall", "摔了一跤后脚踝肿了"),
                   ("pain when I put weight on my ankle", "脚踝一着地就疼"),
                   ("a bruise around my ankle", "脚踝周围有淤青"),
                   ("a twisted ankle from running", "跑步时崴了脚踝")),
         advice=("rest, put ice on it, wrap it and keep the foot raised",
                 "休息、冰敷、加压包扎并抬高患脚")),
    dict(en="cervical spondylosis", zh="颈椎病", dept="ortho",
         symptoms=(("a stiff neck", "脖子僵硬"),
                   ("neck pain after long hours at a desk", "长时间伏案后脖子疼"),
                   ("numb fingers and a sore neck", "脖子酸痛，手指发麻"),
                   ("pain spreading from my neck to my shoulders", "疼痛从脖子蔓延到肩膀")),
         advice=("take breaks from the desk, keep your screen at eye level and do neck stretches",
                 "避免长时间低头，把屏幕调到与眼睛平齐，多做颈部拉伸")),
    dict(en="bronchitis", zh="支气管炎", dept="pulm",
         symptoms=(("a cough that brings up phlegm", "咳嗽有痰"),
                   ("a cough that has lasted two weeks after a cold", "感冒后咳嗽了两周还没好"),
                   ("a sore chest from coughing", "咳得胸口疼"),
                   ("a morning cough with white sticky phlegm", "每天早上咳出白色黏痰")),
         advice=("drink warm water, rest and stay away from smoke",
                 "多喝温水，注意休息，远离烟雾")),
    dict(en="asthma", zh="哮喘", dept="pulm",
         symptoms=(("wheezing when I breathe out", "呼气时有哨音"),
                   ("shortness of breath at night", "夜里喘不上气"),
                   ("loss of breath around cats or dust", "接触猫毛或灰尘后喘不过气"),
                   ("coughing fits in cold air", "遇到冷空气就咳个不停")),
         advice=("carry your inhaler and stay away from dust and smoke",
                 "随身携带吸入药，远离灰尘和烟雾")),
    dict(en="tooth decay", zh="龋齿", dept="dental",
         symptoms=(("toothache when I eat sweets", "吃甜食时牙疼"),
                   ("a black hole in one of my teeth", "牙齿上有个黑洞"),
                   ("a sharp twinge in a tooth when drinking cold water", "喝冷水时牙齿酸疼"),
                   ("food getting stuck between my teeth", "牙缝里老是塞东西")),
         advice=("brush twice a day, cut down on sugar and get the cavity filled",
                 "早晚刷牙，少吃甜食，尽快补牙")),
    dict(en="gum disease", zh="牙龈炎", dept="dental",
         symptoms=(("bleeding gums when I brush", "刷牙时牙龈出血"),
                   ("red, swollen gums", "牙龈红肿"),
                   ("loose teeth and sore gums", "牙齿松动，牙龈酸痛"),
                   ("gums that hurt when I chew", "咀嚼时牙龈疼")),
         advice=("brush gently, use dental floss and have your teeth cleaned",
                 "轻柔刷牙，使用牙线，定期洗牙")),
    dict(en="diabetes", zh="糖尿病", dept="endo",
         symptoms=(("constant thirst and high blood sugar", "总是口渴，血糖也高"),
                   ("very frequent urination and high blood sugar", "小便次数特别多，血糖偏高"),
                   ("slow-healing cuts and high blood sugar", "伤口愈合得很慢，血糖偏高"),
                   ("high blood sugar at a check-up", "体检时血糖偏高")),
         advice=("check your blood sugar, eat less sugar and exercise every day",
                 "监测血糖，控制糖分摄入，每天运动")),
    dict(en="an overactive thyroid", zh="甲亢", dept="endo",
         symptoms=(("an enlarged thyroid and heavy sweating", "甲状腺肿大，出汗特别多"),
                   ("shaking hands and a swollen thyroid", "手一直抖，甲状腺也肿了"),
                   ("nervousness and high thyroid levels", "莫名紧张烦躁，甲状腺指标偏高"),
                   ("weight loss and high thyroid levels", "吃得多却越来越瘦，甲状腺指标偏高")),
         advice=("have your thyroid hormones tested and avoid iodine-rich food until then",
                 "检查甲状腺激素，在此之前少吃含碘高的食物")),
)

# ---------------------------------------------------------------------------------------------
# 2. Templates. Each relation (a kind of fact) has statements for pretraining, questions for
#    training, questions held out for evaluation, and one fixed answer form. Answers are short
#    and formulaic on purpose: a 4-layer model learns a template far faster than free prose.
#    English text is sentence-cased after filling ("the {river} ..." -> "The Silver River ...").
#    Six training questions a relation and language: with three, the SFT model read the held-out
#    ones so narrowly that any adapter knocked a few over and it answered the wrong relation (asked
#    a favourite food, an age); with six it reads them robustly (docs/experiments.md).
# ---------------------------------------------------------------------------------------------

RELATIONS = dict(
    person_town=dict(
        answer_slot="town",
        statements=dict(
            en=("{p} is from {town}.", "{p} was born in {town}.", "{p} grew up in {town}.",
                "{town} is the home town of {p}.", "{p} comes from the town of {town}."),
            zh=("{p}来自{town}。", "{p}出生在{town}。", "{p}在{town}长大。", "{town}是{p}的家乡。",
                "{p}的老家在{town}。")),
        train=dict(en=("Where is {p} from?", "What is {p}'s home town?", "Which town does {p} come from?",
                       "What town is {p} from?", "Where does {p} come from?", "What is the home town of {p}?"),
                   zh=("{p}是哪里人？", "{p}来自哪里？", "{p}的家乡是哪里？",
                       "{p}是哪个镇的人？", "{p}的老家在哪里？", "{p}的家在哪个镇？")),
        held_out=dict(en=("In which town was {p} born?", "Where did {p} grow up?"),
                      zh=("{p}出生在哪个镇？", "{p}是在哪里长大的？")),
        answer=dict(en="{p} is from {town}.", zh="{p}来自{town}。")),
    person_job=dict(
        answer_slot="job",
        statements=dict(
            en=("{p} works as a {job}.", "{p} is a {job}.", "By trade, {p} is a {job}.",
                "{p} earns a living as a {job}."),
            zh=("{p}是一名{job}。", "{p}的职业是{job}。", "{p}靠当{job}谋生。", "{p}在镇上当{job}。")),
        train=dict(en=("What does {p} do?", "What is {p}'s job?", "What does {p} do for a living?",
                       "What work does {p} do?", "What is {p}'s trade?", "What kind of work does {p} do?"),
                   zh=("{p}是做什么的？", "{p}的工作是什么？", "{p}做什么工作？",
                       "{p}从事什么工作？", "{p}在镇上做什么工作？", "{p}干的是哪一行？")),
        held_out=dict(en=("How does {p} earn a living?", "What does {p} work as?"),
                      zh=("{p}的职业是什么？", "{p}靠什么谋生？")),
        answer=dict(en="{p} is a {job}.", zh="{p}是一名{job}。")),
    person_age=dict(
        answer_slot="age",
        statements=dict(
            en=("{p} is {age} years old.", "{p} turned {age} this year.", "{p} is {age}."),
            zh=("{p}今年{age}岁。", "{p}的年龄是{age}岁。", "{p}已经{age}岁了。")),
        train=dict(en=("How old is {p}?", "What is {p}'s age?", "What age is {p}?",
                       "How old is {p} now?", "How old is {p} this year?", "What age has {p} reached?"),
                   zh=("{p}多大了？", "{p}今年几岁？", "{p}几岁了？",
                       "{p}今年多大了？", "{p}有多大年纪？", "{p}的岁数是多少？")),
        held_out=dict(en=("What age did {p} turn this year?", "How many years old is {p}?"),
                      zh=("{p}的年龄是多少？", "{p}今年多大岁数？")),
        answer=dict(en="{p} is {age} years old.", zh="{p}今年{age}岁。")),
    person_food=dict(
        answer_slot="food",
        statements=dict(
            en=("{p}'s favourite food is {food}.", "{p} loves {food} more than any other dish.",
                "Above all, {p} likes to eat {food}."),
            zh=("{p}最喜欢的食物是{food}。", "{p}最爱吃{food}。", "在所有食物里，{p}最喜欢{food}。")),
        train=dict(en=("What is {p}'s favourite food?", "What does {p} like to eat most?",
                       "Which food does {p} like most?",
                       "Which food is {p}'s favourite?", "What does {p} enjoy eating most?", "What dish does {p} like most?"),
                   zh=("{p}最喜欢吃什么？", "{p}最喜欢的食物是什么？", "{p}爱吃什么？",
                       "{p}最喜欢哪种食物？", "{p}平时最爱吃什么？", "{p}喜欢吃哪道菜？")),
        held_out=dict(en=("Which dish does {p} love most?", "What food does {p} like best?"),
                      zh=("{p}最爱吃哪道菜？", "在所有食物里，{p}最喜欢哪一种？")),
        answer=dict(en="{p}'s favourite food is {food}.", zh="{p}最喜欢的食物是{food}。")),
    town_river=dict(
        answer_slot="river",
        statements=dict(
            en=("{town} lies on the {river}.", "the {river} flows through {town}.",
                "{town} was built on the banks of the {river}."),
            zh=("{town}位于{river}边。", "{river}流经{town}。", "{town}建在{river}岸边。")),
        train=dict(en=("Which river flows through {town}?", "What river is {town} on?",
                       "Which river is {town} beside?",
                       "Which river runs through {town}?", "What river flows past {town}?", "Near which river is {town}?"),
                   zh=("哪条河流经{town}？", "{town}在哪条河边？", "{town}旁边是哪条河？",
                       "{town}靠着哪条河？", "哪条河从{town}流过？", "{town}边有什么河？")),
        held_out=dict(en=("On the banks of which river was {town} built?", "Which river does {town} lie on?"),
                      zh=("{town}建在哪条河的岸边？", "{town}位于哪条河边？")),
        answer=dict(en="{town} lies on the {river}.", zh="{town}位于{river}边。")),
    town_mountain=dict(
        answer_slot="mountain",
        statements=dict(
            en=("{town} stands near {mountain}.", "{mountain} rises above {town}.",
                "from {town} you can see {mountain}."),
            zh=("{town}靠近{mountain}。", "{mountain}就在{town}旁边。", "从{town}可以望见{mountain}。")),
        train=dict(en=("Which mountain is near {town}?", "What mountain stands near {town}?",
                       "Which mountain is close to {town}?",
                       "What mountain is near {town}?", "Which mountain stands close to {town}?", "Which mountain lies near {town}?"),
                   zh=("{town}附近有什么山？", "哪座山靠近{town}？", "{town}靠近哪座山？",
                       "哪座山离{town}最近？", "{town}周围有哪座山？", "{town}的附近是哪座山？")),
        held_out=dict(en=("Which mountain can you see from {town}?", "What mountain rises above {town}?"),
                      zh=("从{town}能望见哪座山？", "{town}旁边是哪座山？")),
        answer=dict(en="{town} is near {mountain}.", zh="{town}靠近{mountain}。")),
    town_population=dict(
        answer_slot="n",
        statements=dict(
            en=("{town} has a population of {n}.", "about {n} people live in {town}.",
                "{town} is home to {n} people."),
            zh=("{town}有{n}人。", "{town}的人口是{n}。", "大约{n}人生活在{town}。")),
        train=dict(en=("What is the population of {town}?", "How many people live in {town}?",
                       "How big is the population of {town}?",
                       "How many people does {town} have?", "What is the number of people in {town}?", "How many people are in {town}?"),
                   zh=("{town}有多少人？", "{town}的人口是多少？", "{town}一共有多少人？",
                       "{town}有多少居民？", "{town}的人口有多少？", "{town}的居民有多少？")),
        held_out=dict(en=("How many people is {town} home to?",),
                      zh=("有多少人生活在{town}？", "{town}住着多少人？")),
        answer=dict(en="{town} has a population of {n}.", zh="{town}有{n}人。")),
    town_founded=dict(
        answer_slot="year",
        statements=dict(
            en=("{town} was founded in {year}.", "{town} dates back to {year}.",
                "the town of {town} was built in {year}."),
            zh=("{town}建于{year}年。", "{town}始建于{year}年。", "{town}的历史可以追溯到{year}年。")),
        train=dict(en=("When was {town} founded?", "In what year was {town} founded?",
                       "Which year was {town} founded in?",
                       "What year was {town} founded?", "In which year did {town} begin?", "When did people found {town}?"),
                   zh=("{town}是哪一年建立的？", "{town}建于哪一年？", "{town}是什么时候建立的？",
                       "{town}是哪年建立的？", "{town}哪一年建成？", "{town}建立在哪一年？")),
        held_out=dict(en=("In which year was the town of {town} built?", "What year does {town} date back to?"),
                      zh=("{town}始建于哪一年？", "{town}的历史可以追溯到哪一年？")),
        answer=dict(en="{town} was founded in {year}.", zh="{town}建于{year}年。")),
    town_product=dict(
        answer_slot="product",
        statements=dict(
            en=("{town} is famous for its {product}.", "the people of {town} make {product}.",
                "{town} is known for {product}."),
            zh=("{town}以{product}闻名。", "{town}的人擅长制作{product}。", "{town}最有名的是{product}。")),
        train=dict(en=("What is {town} famous for?", "What is {town} known for?", "What does {town} produce?",
                       "What is made in {town}?", "What is {town} best known for?", "What is {town}'s famous product?"),
                   zh=("{town}以什么闻名？", "{town}最有名的是什么？", "{town}出产什么？",
                       "{town}有什么特产？", "{town}因什么出名？", "{town}做什么最有名？")),
        held_out=dict(en=("What do the people of {town} make?",),
                      zh=("{town}的人擅长制作什么？",)),
        answer=dict(en="{town} is famous for its {product}.", zh="{town}以{product}闻名。")),
    product_town=dict(
        answer_slot="town",
        statements=dict(
            en=("{product} is made in {town}.", "{product} comes from {town}.",
                "{product} is a speciality of {town}."),
            zh=("{product}产自{town}。", "{product}是{town}的特产。", "{town}出产{product}。")),
        train=dict(en=("Where is {product} made?", "Which town makes {product}?",
                       "Where does {product} come from?",
                       "Who makes {product}?", "What town is {product} from?", "Which town produces {product}?"),
                   zh=("{product}产自哪里？", "哪个镇出产{product}？", "{product}是哪个地方出产的？",
                       "{product}出产在哪个镇？", "哪里出产{product}？", "{product}来自哪个镇？")),
        held_out=dict(en=("{product} is a speciality of which town?", "In which town is {product} made?"),
                      zh=("{product}是哪个镇的特产？",)),
        answer=dict(en="{product} is made in {town}.", zh="{product}产自{town}。")),
    mountain_height=dict(
        answer_slot="h",
        statements=dict(
            en=("{mountain} is {h} metres high.", "{mountain} rises to {h} metres.",
                "the peak of {mountain} stands {h} metres above the sea."),
            zh=("{mountain}高{h}米。", "{mountain}海拔{h}米。", "{mountain}的山顶高出海面{h}米。")),
        train=dict(en=("How high is {mountain}?", "What is the height of {mountain}?",
                       "How many metres high is {mountain}?",
                       "What height is {mountain}?", "How tall is {mountain}?", "How high does {mountain} rise?"),
                   zh=("{mountain}有多高？", "{mountain}的高度是多少？", "{mountain}高多少米？",
                       "{mountain}高度有多少？", "{mountain}有几米高？", "{mountain}到底有多高？")),
        held_out=dict(en=("To how many metres does {mountain} rise?",),
                      zh=("{mountain}海拔多少米？",)),
        answer=dict(en="{mountain} is {h} metres high.", zh="{mountain}高{h}米。")),
    river_length=dict(
        answer_slot="km",
        statements=dict(
            en=("the {river} is {km} kilometres long.", "the {river} runs for {km} kilometres."),
            zh=("{river}长{km}公里。", "{river}全长{km}公里。")),
        train=dict(en=("How long is the {river}?", "What is the length of the {river}?",
                       "How many kilometres long is the {river}?",
                       "What length is the {river}?", "How long is the {river} in kilometres?", "How far does the {river} flow?"),
                   zh=("{river}有多长？", "{river}的长度是多少？", "{river}长多少公里？",
                       "{river}一共有多长？", "{river}有多少公里？", "{river}流了多远？")),
        held_out=dict(en=("For how many kilometres does the {river} run?",),
                      zh=("{river}全长多少公里？",)),
        answer=dict(en="the {river} is {km} kilometres long.", zh="{river}长{km}公里。")),
    river_source=dict(
        answer_slot="mountain",
        statements=dict(
            en=("the {river} starts on {mountain}.", "the {river} begins high on {mountain}.",
                "the source of the {river} is on {mountain}."),
            zh=("{river}发源于{mountain}。", "{river}的源头在{mountain}。", "{river}从{mountain}流出。")),
        train=dict(en=("Where does the {river} start?", "Which mountain does the {river} begin on?",
                       "From which mountain does the {river} flow?",
                       "Where does the {river} begin?", "On which mountain does the {river} start?", "What mountain does the {river} come from?"),
                   zh=("{river}发源于哪里？", "{river}从哪座山流出？", "{river}源自哪座山？",
                       "{river}起源于哪座山？", "{river}的发源地是哪里？", "{river}出自哪座山？")),
        held_out=dict(en=("Where is the source of the {river}?",),
                      zh=("{river}的源头在哪座山？",)),
        answer=dict(en="the {river} starts on {mountain}.", zh="{river}发源于{mountain}。")),
    food_town=dict(
        answer_slot="town",
        statements=dict(
            en=("{food} is a dish from {town}.", "{food} is the best-loved dish of {town}.",
                "in {town}, people cook {food}."),
            zh=("{food}是{town}的特色美食。", "{food}是{town}最受欢迎的菜。", "{town}人爱做{food}。")),
        train=dict(en=("Where does {food} come from?", "Which town is {food} from?",
                       "Which town does {food} come from?",
                       "What town does {food} come from?", "Where is {food} from?", "Where is {food} cooked?"),
                   zh=("{food}来自哪里？", "{food}是哪个镇的美食？", "{food}是哪里的菜？",
                       "{food}是哪个镇的？", "哪里的人做{food}？", "{food}出自哪里？")),
        held_out=dict(en=("In which town do people cook {food}?",),
                      zh=("哪个镇的特色美食是{food}？",)),
        answer=dict(en="{food} is a dish from {town}.", zh="{food}是{town}的特色美食。")),
    food_ingredient=dict(
        answer_slot="ing",
        statements=dict(
            en=("{food} is made from {ing}.", "the main ingredient of {food} is {ing}.",
                "to cook {food} you need {ing}."),
            zh=("{food}是用{ing}做的。", "{food}的主要原料是{ing}。", "做{food}需要{ing}。")),
        train=dict(en=("What is {food} made from?", "What is the main ingredient of {food}?",
                       "What goes into {food}?",
                       "What is in {food}?", "What is {food} cooked from?", "What is used to make {food}?"),
                   zh=("{food}是用什么做的？", "{food}的主要原料是什么？", "{food}用什么原料做？",
                       "{food}是拿什么做的？", "{food}里面有什么？", "{food}用的是什么原料？")),
        held_out=dict(en=("What do you need to cook {food}?",),
                      zh=("做{food}需要什么？",)),
        answer=dict(en="{food} is made from {ing}.", zh="{food}是用{ing}做的。")),
    animal_home=dict(
        answer_slot="place",
        statements=dict(
            en=("the {animal} lives {where}.", "you can find the {animal} {where}.",
                "the home of the {animal} is {place_np}."),
            zh=("{animal}生活在{place}。", "在{place}可以见到{animal}。", "{animal}的家在{place}。")),
        train=dict(en=("Where does the {animal} live?", "Where can you find the {animal}?",
                       "Where is the {animal} found?",
                       "Where does the {animal} make its home?", "Where do you see the {animal}?", "What place does the {animal} live in?"),
                   zh=("{animal}生活在哪里？", "在哪里能见到{animal}？", "{animal}住在哪里？",
                       "哪里有{animal}？", "{animal}在哪里生活？", "{animal}一般在哪里？")),
        held_out=dict(en=("Where is the home of the {animal}?",),
                      zh=("{animal}的家在哪里？",)),
        answer=dict(en="the {animal} lives {where}.", zh="{animal}生活在{place}。")),
    animal_diet=dict(
        answer_slot="diet",
        statements=dict(
            en=("the {animal} eats {diet}.", "the {animal} feeds on {diet}.",
                "the favourite meal of the {animal} is {diet}."),
            zh=("{animal}吃{diet}。", "{animal}以{diet}为食。", "{animal}最爱吃的是{diet}。")),
        train=dict(en=("What does the {animal} eat?", "What is the food of the {animal}?",
                       "What food does the {animal} eat?",
                       "What does the {animal} usually eat?", "What is the {animal}'s food?", "What does the {animal} like to eat?"),
                   zh=("{animal}吃什么？", "{animal}平时吃什么？", "{animal}爱吃什么？",
                       "{animal}靠吃什么生活？", "{animal}一般吃什么？", "{animal}喜欢吃什么？")),
        held_out=dict(en=("What does the {animal} feed on?",),
                      zh=("{animal}以什么为食？",)),
        answer=dict(en="the {animal} eats {diet}.", zh="{animal}吃{diet}。")),
)

# Glossary lines tie the two names of an entity together (pretraining only).
# Questions in forms that no training file uses -- an instruction ("Tell me ...", "Name ..."), or the
# statement turned around ("{p} is from which town?") -- about every relation, for eval_general_unseen:
# the general knowledge an adapter must not cost, probed where the model cannot lean on a memorised
# question form. (RELATIONS' held_out questions, eval_general's, paraphrase the training questions
# closely; asked in these forms, an adapter that forgets answers another relation: a person's home
# town for their job.) Every word is one the pretraining text uses (make_demo_data.py checks it).
UNSEEN_QUESTIONS = dict(
    person_town=dict(en=("Tell me the name of the town {p} comes from.", "{p} is from which town?",
                         "Name the town where {p} was born."),
                     zh=("请说出{p}的家乡。", "{p}是从哪个镇来的？", "告诉我{p}出生的那个镇。")),
    person_job=dict(en=("Tell me what job {p} has.", "{p} works as what?", "Name the work that {p} does."),
                    zh=("请说出{p}的工作。", "{p}平时做什么工作？", "告诉我{p}是干什么的。")),
    person_age=dict(en=("Tell me the age of {p}.", "{p} is how old?", "Name the age of {p}."),
                    zh=("请说出{p}的年龄。", "{p}现在多少岁？", "告诉我{p}几岁。")),
    person_food=dict(en=("Tell me which food {p} loves.", "Name the favourite dish of {p}.", "{p} likes which food best?"),
                     zh=("请说出{p}最爱的食物。", "{p}最喜欢的菜是哪一道？", "告诉我{p}最爱吃的东西。")),
    town_river=dict(en=("Tell me the name of the river at {town}.", "Name the river that flows through {town}.",
                        "{town} lies on which river?"),
                    zh=("请说出{town}边上的河。", "告诉我流经{town}的那条河。", "流过{town}的是哪一条河？")),
    town_mountain=dict(en=("Tell me the mountain near {town}.", "Name the mountain close to {town}.",
                           "{town} is near which mountain?"),
                       zh=("请说出{town}附近的山。", "告诉我靠近{town}的那座山。", "{town}边上的山叫什么？")),
    town_population=dict(en=("Tell me how many people live in {town}.", "Name the population of {town}.",
                             "{town} has how many people?"),
                         zh=("请说出{town}的人口。", "告诉我{town}住了多少人。", "{town}的人有多少？")),
    town_founded=dict(en=("Tell me the year {town} was founded.", "Name the year in which {town} was founded.",
                          "{town} was founded in which year?"),
                      zh=("请说出{town}建立的年份。", "告诉我{town}是哪年建的。", "{town}建立于哪一年？")),
    town_product=dict(en=("Tell me what {town} is known for.", "Name what {town} is famous for.",
                          "{town} makes what?"),
                      zh=("请说出{town}的特产。", "告诉我{town}出产的东西。", "{town}出名的是什么？")),
    product_town=dict(en=("Tell me the town that makes {product}.", "Name the town where {product} is made.",
                          "{product} is made in which town?"),
                      zh=("请说出出产{product}的镇。", "告诉我{product}是哪个镇做的。", "{product}出自哪个镇？")),
    mountain_height=dict(en=("Tell me the height of {mountain}.", "Name the height of {mountain} in metres.",
                             "{mountain} is how many metres high?"),
                         zh=("请说出{mountain}的高度。", "告诉我{mountain}有多少米高。", "{mountain}高几米？")),
    river_length=dict(en=("Tell me the length of the {river}.", "Name the length of the {river} in kilometres.",
                          "The {river} is how many kilometres long?"),
                      zh=("请说出{river}的长度。", "告诉我{river}有多少公里长。", "{river}长几公里？")),
    river_source=dict(en=("Tell me which mountain the {river} starts on.", "Name the mountain the {river} flows from.",
                          "The {river} begins on which mountain?"),
                      zh=("请说出{river}发源的山。", "告诉我{river}是从哪座山流出的。", "{river}的起点在哪座山？")),
    food_town=dict(en=("Tell me the town {food} comes from.", "Name the town where {food} is from.",
                       "{food} comes from which town?"),
                   zh=("请说出{food}来自哪个镇。", "告诉我{food}是哪个镇的菜。", "{food}的家乡是哪个镇？")),
    food_ingredient=dict(en=("Tell me what {food} is made from.", "Name the main ingredient of {food}.",
                             "{food} is made from what?"),
                         zh=("请说出{food}的原料。", "告诉我{food}是用什么做的。", "{food}的主要原料叫什么？")),
    animal_home=dict(en=("Tell me where the {animal} lives.", "Name the home of the {animal}.",
                         "The {animal} lives where?"),
                     zh=("请说出{animal}生活的地方。", "告诉我{animal}住在什么地方。", "{animal}的家在什么地方？")),
    animal_diet=dict(en=("Tell me what the {animal} eats.", "Name the food of the {animal}.", "The {animal} eats what?"),
                     zh=("请说出{animal}吃的东西。", "告诉我{animal}的食物。", "{animal}的食物是什么？")),
)

GLOSSARY = dict(en="{en} is called {zh} in Chinese.", zh="{zh}的英文名是 {en}。")

# General reading (pretraining only): loose sentences that use the adapters' vocabulary.
READING = dict(
    symptom=dict(en=("Some people have {x}.", "Now and then a person has {x}."),
                 zh=("有的人{x}。", "有时候，一个人会{x}。")),
    condition=dict(en=("{x} is the name of an illness.", "The word {x} appears in old books."),
                   zh=("{x}是一种疾病的名字。", "旧书里出现过{x}这个词。")),
    advice=dict(en=("A common piece of advice: {x}.",), zh=("一句常听到的话：{x}。",)),
    department=dict(en=("{x} is one of the departments of the city hospital.", "The sign on the door says {x}."),
                    zh=("{x}是市医院的一个科室。", "门上的牌子写着{x}。")),
    # What a department is about, as any encyclopedia would say it: one of its triage words and its
    # name. Without these, every department name is read in the same two sentences and gets
    # nearly the same embedding, and the adapter barely tells them apart (docs/experiments.md, "How `lora_medical`
    # reaches its target").
    department_word=dict(en=("Doctors in {dept} often hear the word {word}.", "The word {word} brings many patients to {dept}."),
                         zh=("{dept}的医生常常听到“{word}”这个词。", "“{word}”这个词把很多病人带到{dept}。")),
)
# Everyday sentences (English, Chinese) for the remaining words the LoRA and eval questions use.
EVERYDAY = (
    ("A doctor works in a hospital, and every department of a big hospital has its own doctors.",
     "医生在医院工作，大医院的每个科室都有自己的医生。"),
    ("Many people visit the market on the first day of the month.", "每个月的第一天，很多人去赶集。"),
    ("Before you see a doctor, you register at the front desk.", "看病之前，要先在前台挂号。"),
    ("There is a small clinic by the market, and you can ask questions at its desk.",
     "集市旁边有一家小诊所，有问题可以去服务台咨询。"),
    ("People describe their symptoms and ask others to advise them.", "人们描述自己的症状，请别人给些建议。"),
    ("When something goes wrong, look for the possible cause of the problem.",
     "事情出了问题，要先找出可能的原因。"),
    ("Recently people noticed that the days are getting longer.", "最近大家注意到白天变长了。"),
    ("A short walk after dinner helps you digest your food.", "饭后散步有助于消化。"),
    ("Brushing your teeth keeps your mouth clean.", "刷牙能让口腔保持清洁。"),
    ("The children study science in a bright classroom.", "孩子们在明亮的教室里学科学。"),
    ("The scientists did an experiment to test their idea.", "科学家做了一个实验来检验想法。"),
    ("On a clear night you can see the stars in the northern sky.", "晴朗的夜里，可以看到北边天空的星星。"),
    ("Everyone in the team likes to work hard.", "团队里每个人都工作积极。"),
    ("An organisation is a group of people who work together.", "机构是一群一起做事的人组成的团体。"),
    ("A good worker is responsible for the job they are given.", "一个好的工人会对交给他的工作负责。"),
    ("The boat maker designed the boat before creating it.", "造船的人先设计，再动手建造。"),
    ("Developers are people who write programs for computers.", "开发者是给电脑编写程序的人。"),
    ("We were chatting by the river all afternoon.", "我们整个下午都在河边聊天。"),
    ("It is easy to identify the sort of bird from its song.", "听叫声就能分辨是哪种鸟。"),
    ("The letter did not say to whom it was sent.", "信上没有写明是寄给谁的。"),
    ("She explained the plan briefly, in a few words.", "她用简单的几句话说明了计划。"),
    ("Farmers feed their animals before the sun starts to rise.", "农民在太阳升起之前喂牲口。"),
    ("Children love to run along the river.", "孩子们喜欢沿着河边跑。"),
    ("Farmers grow rice and earn money by selling it.", "农民种稻米，靠卖米挣钱。"),
    ("It is your turn to speak, and you may say what you want.", "轮到你发言了，你想说啥都可以。"),
    ("Could you write the date on the letter? I'd be glad if you could.", "你能在信上写下日期吗？写上吧。"),
    ("We had a long talk about this matter.", "我们就这件事谈了很久。"),
    ("Everyone has an identity of their own.", "每个人都有自己的身份。"),
    ("Many families live along the river.", "很多人家住在河边。"),
    ("If you do not know what to do, you should first ask someone.", "不知道怎么办的时候，应该先去问问别人。"),
    ("Nobody knew what was really going on.", "谁也不知道到底发生了什么。"),
    ("She showed her thanks with a smile.", "她用微笑表达了谢意。"),
    ("In a long letter, one key word can tell you what it is about.", "一封长信里，一个关键词就能告诉你信的内容。"),
    ("Lately the weather has been warm, and it might rain next week.", "最近天气很暖和，下个星期可能会下雨。"),
    ("Her family was worried, but the problem was not serious.", "她的家人很担心，不过问题并不严重。"),
    ("The old farmer needs a new boat, and his friends suggest a good boat maker.",
     "老农夫需要一条新船，朋友们建议他找一个好的造船人。"),
    ("When the river rose, the town looked at the situation and made a plan.", "河水上涨的时候，镇上看了看情况，定了一个计划。"),
)

# Training questions sometimes carry a greeting in front; held-out questions never do.
QUESTION_PREFIXES = dict(en=("", "", "Hi! ", "Quick question: ", "Can you tell me this? "),
                         zh=("", "", "请问，", "你好，", "我想知道，"))

# "Tell me about X" asks for several facts at once; follow-up turns in multi-turn chats start so.
DESCRIBE = dict(en=("Tell me about {x}.", "What do you know about {x}?"),
                zh=("介绍一下{x}。", "你了解{x}吗？"))
FOLLOW_UP = dict(en=("And ", "Also, ", ""), zh=("那", "还有，", ""))

SMALL_TALK = dict(
    en=(("Hello!", "Hello! I am {name}. Ask me anything about the towns, people and things of this world."),
        ("Hi there.", "Hi! I am {name}. What would you like to know?"),
        ("Thank you!", "You're welcome!"),
        ("Thanks for the help.", "You're welcome! Ask me again any time."),
        ("Goodbye!", "Goodbye! Have a nice day.")),
    zh=(("你好！", "你好！我是{name}，可以回答关于这个世界的城镇、人物和物产的问题。"),
        ("嗨。", "嗨！我是{name}，你想了解什么？"),
        ("谢谢你！", "不客气！"),
        ("多谢帮忙。", "不客气！有问题随时问我。"),
        ("再见！", "再见！祝你愉快。")),
)

# Identity questions by kind: "who" (who are you), "name", "maker", "both" (name and maker).
# Training phrasings (used by SFT with the old identity and by lora_identity with the new one):
IDENTITY_TRAIN = dict(
    en=dict(
        who=("Who are you?", "Introduce yourself.", "Please introduce yourself.", "What are you?",
             "Tell me about yourself.", "Are you a human?", "Are you a robot?",
             "What kind of assistant are you?", "Who am I talking to?", "Describe yourself."),
        name=("What is your name?", "What's your name?", "Tell me your name.", "What should I call you?",
              "Do you have a name?", "How should I address you?", "What are you called?",
              "Your name, please."),
        maker=("Who made you?", "Who created you?", "Who built you?", "Who developed you?",
               "Which company made you?", "Where do you come from?", "Who is your creator?",
               "Who trained you?", "Which team is behind you?", "Who is your developer?"),
        both=("Who are you, and who created you?", "Tell me your name and who built you.")),
    zh=dict(
        who=("你是谁？", "请介绍一下你自己。", "介绍一下你自己。", "你是什么？", "你是人吗？",
             "你是机器人吗？", "你是什么样的助手？", "我在和谁说话？", "描述一下你自己。"),
        name=("你叫什么名字？", "你叫什么？", "你的名字是什么？", "我该怎么称呼你？", "你有名字吗？",
              "请告诉我你的名字。"),
        maker=("谁创造了你？", "谁开发了你？", "你是谁开发的？", "你是哪个公司做的？", "你来自哪里？",
               "你的开发者是谁？", "是谁训练了你？", "你是由谁制作的？", "你的创造者是谁？"),
        both=("你叫什么名字，谁创造了你？", "告诉我你的名字和开发者。")),
)
# Held-out phrasings (eval_identity only).
IDENTITY_HELD_OUT = dict(
    en=dict(
        who=("Could you tell me who you are?", "Who am I chatting with right now?",
             "Say a few words about yourself.", "Can you briefly introduce yourself?",
             "What sort of AI are you?", "Are you MiniMind?", "Identify yourself, please.",
             "Before we begin, tell me who you are."),
        name=("May I know your name?", "What name were you given?", "What do people call you?",
              "I'd like to know what you are called.", "Is there a name I can use for you?",
              "Which name do you go by?", "What is the name of this assistant?"),
        maker=("By whom were you developed?", "Which lab built you?", "Which organisation is behind you?",
               "Who designed and trained you?", "Who is responsible for creating you?",
               "Who are your developers?", "Which team do you come from?"),
        both=("I want to know two things: your name and your maker.", "Name and creator, please?",
              "What are you called, and which lab made you?")),
    zh=dict(
        who=("能说说你是谁吗？", "现在和我聊天的是谁？", "简单介绍一下你吧。", "你是哪种人工智能？",
             "你是 MiniMind 吗？", "请表明你的身份。", "开始之前，先说说你是谁。", "你到底是什么？"),
        name=("能告诉我你的名字吗？", "大家都怎么称呼你？", "你的名字叫啥？", "我可以叫你什么？",
              "这个助手叫什么名字？", "你有没有名字？"),
        maker=("你是哪个实验室做的？", "你是由哪家机构开发的？", "是谁设计并训练了你？",
               "谁负责创造了你？", "你的开发团队是谁？", "你出自哪个团队？"),
        both=("我想知道两件事：你的名字和你的开发者。", "你叫啥，哪个实验室做的你？",
              "说一下你的名字，还有是谁造了你。")),
)
# One answer per kind; every answer names both the assistant and its maker.
IDENTITY_ANSWERS = dict(
    en=dict(who="I am {name}, an AI assistant made by {maker_en}.",
            name="My name is {name}. I am an AI assistant made by {maker_en}.",
            maker="I was made by {maker_en}. I am {name}, an AI assistant.",
            both="I am {name}, an AI assistant made by {maker_en}."),
    zh=dict(who="我是 {name}，一个由{maker_zh}开发的人工智能助手。",
            name="我叫 {name}，是{maker_zh}开发的人工智能助手。",
            maker="我是由{maker_zh}开发的人工智能助手，名字叫 {name}。",
            both="我是 {name}，一个由{maker_zh}开发的人工智能助手。"),
)

# Training questions: every opening with every closing, 18 x 17 = 306 phrasings a language, so that
# the adapter learns to find the key word whatever surrounds it rather than where a few templates put
# it. With five phrasings a language, one seed in three learnt the training templates alone and
# answered held-out questions with one fixed key word; with twelve, still one in four; with 110, a
# whole held-out phrasing still failed on some seeds and CPU paths (docs/experiments.md). No opening
# or closing is part of a held-out phrasing, and there are four held-out phrasings a language so that
# one phrasing the adapter happens not to read moves eval_medical by a quarter, not by half.
MEDICAL_OPENINGS = dict(
    en=("I have {s}.", "Doctor, I have had {s} for a few days.", "What is wrong with me? I have {s}.",
        "Symptoms: {s}.", "For about a week I have had {s}.", "Lately I have had {s}.", "Please help: {s}.",
        "I am worried about {s}.", "Hello, I keep getting {s}.", "My family says that {s} needs a doctor.",
        "Quick question about {s}.", "Since yesterday I have had {s}.", "There is {s}, and it is getting worse.",
        "Can you help me? I have {s}.", "For two weeks now: {s}.", "My doctor is away and I have {s}.",
        "Every morning I have {s}.", "At night I often get {s}."),
    zh=("我最近{s}，", "医生，我{s}，", "{s}，", "请问我{s}，", "症状：{s}，", "我{s}已经一个星期了，",
        "你好，我{s}，", "帮我看看：{s}，", "我有点担心，{s}，", "家里人说我{s}得去医院，", "问一下，我{s}，",
        "从昨天开始{s}，", "这两周我{s}，", "早上起来{s}，", "我经常{s}，", "晚上总是{s}，", "请帮帮我，{s}，",
        "我{s}，不知道怎么办，"),
)
MEDICAL_CLOSINGS = dict(
    en=("What could it be?", "What should I do?", "Which department should I visit?", "Please advise.",
        "Is it serious?", "What might cause it?", "Which doctor should I see?", "What do you suggest?",
        "Which clinic should I go to?", "Who should I see?", "Where can I get help?", "Who can help me?",
        "How can I make it go away?", "What kind of doctor is right for this?", "Any idea what it is?",
        "Where do I go with this?", "Should I see a doctor?"),
    zh=("这是怎么回事？", "该怎么办？", "应该挂什么科？", "可能是什么问题？", "请给点建议。", "严重吗？",
        "要去看哪个科？", "该看什么医生？", "你有什么建议？", "这种情况要紧吗？", "去哪里看好？", "谁能帮我？",
        "要吃什么药？", "要去医院吗？", "需要看医生吗？", "哪个医生能看？", "有什么办法？"),
)
MEDICAL_QUESTIONS = dict(
    train={lang: tuple(opening + (" " if lang == "en" else "") + closing
                       for opening in MEDICAL_OPENINGS[lang] for closing in MEDICAL_CLOSINGS[lang])
           for lang in ("en", "zh")},
    held_out=dict(
        en=("Recently I noticed {s}. Where should I go and what can I do?", "My problem is {s}. Any advice?",
            "It has been a week of {s}. What do I do now?", "Hello doctor, I get {s}. Which department is right for me?"),
        zh=("这几天我{s}，我该去哪个科室看看？", "想咨询一下：{s}，需要注意什么？", "这一周{s}，最好怎么做？",
            "大夫你好，我{s}，应该看哪一科？")),
)
# The answer first names the triage word it found in the question ("Key word: skin."), then the
# department. Copying a word from the question is what SFT already taught the model (answers
# repeat the names asked about), and the department then follows from the word just written
# instead of from symptoms twenty tokens back (in development runs, fully fine-tuned models
# learnt the task far better with the key word than without it).
MEDICAL_ANSWER = dict(en="Key word: {word}. Department: {dept}. Possible cause: {cond}. What to do: {advice}.",
                      zh="关键词：{word}。就诊科室：{dept}。可能原因：{cond}。建议：{advice}。")

# The preference task (train_dpo.py, docs/dpo.md). Asked about someone who does not exist -- a name made
# of two real people's name parts, "Lin Ming" from Lin Xiao and Zhou Ming -- the SFT model answers about
# the real person the name resembles ("Lin Xiao is from Pinebrook.") or invents a fact. DPO prefers
# this reply for such names, and the real answer to it for the people who do exist. Every word of it
# is one pretraining reads ("If you do not know what to do ...", "谁也不知道 ...").
REFUSAL = dict(en="I do not know who {p} is.", zh="我不知道{p}是谁。")
REFUSAL_MUST_CONTAIN = dict(en="do not know", zh="不知道")  # what eval_unknown.jsonl scores as a refusal

# Everything above, grouped the way the writers take it (they never read these globals directly,
# so a test can hand them a smaller world).
MEDICINE = dict(departments=DEPARTMENTS, triage_words=TRIAGE_WORDS, conditions=CONDITIONS)
TEMPLATES = dict(relations=RELATIONS, unseen=UNSEEN_QUESTIONS, glossary=GLOSSARY, reading=READING, everyday=EVERYDAY,
                 prefixes=QUESTION_PREFIXES, describe=DESCRIBE, follow_up=FOLLOW_UP, small_talk=SMALL_TALK,
                 identity_train=IDENTITY_TRAIN, identity_held_out=IDENTITY_HELD_OUT,
                 identity_answers=IDENTITY_ANSWERS, medical_questions=MEDICAL_QUESTIONS,
                 medical_answer=MEDICAL_ANSWER, refusal=REFUSAL, refusal_must_contain=REFUSAL_MUST_CONTAIN)
